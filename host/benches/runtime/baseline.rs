//! The native baseline: an axum JSON echo server inside the bench process, doing the least
//! an HTTP JSON service does per request (parse the body, build and serialize a reply), on
//! its own 2-worker tokio runtime. corral's figures are read against it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};

/// A running echo server; [`EchoServer::stop`] ends it.
#[derive(Debug)]
pub struct EchoServer {
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// `POST /echo` with `{"agent": "echo", "input": X}` → `200 {"echo": X}`.
async fn echo(Json(body): Json<Value>) -> Json<Value> {
    let input = match body {
        Value::Object(mut fields) => fields.remove("input").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Json(json!({ "echo": input }))
}

impl EchoServer {
    /// Starts the server on `127.0.0.1:0`.
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("baseline")
            .enable_all()
            .build()
            .expect("baseline runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the baseline server");
        let addr = listener.local_addr().expect("baseline address");
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let app = axum::Router::new().route("/echo", post(echo));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { rt, addr, stop }
    }

    /// Stops accepting, then drops the runtime (and any connection still open).
    pub fn stop(self) {
        let _ = self.stop.send(());
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}
