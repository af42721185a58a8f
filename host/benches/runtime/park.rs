//! A slow upstream for the live-instance figure: `GET /park` holds every request until
//! [`ParkServer::release`], then answers `200 ok`. Jobs of the `fetch` agent pointed at it
//! stay alive, parked inside the host's `http.fetch` call, for as long as the bench wants.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;

#[derive(Debug)]
struct Parked {
    /// Requests that ever arrived.
    arrived: AtomicUsize,
    /// Requests being held right now.
    held: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

/// Decrements `held` however the request ends (answered, or dropped by a closed connection).
struct HeldGuard(Arc<Parked>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn park(State(parked): State<Arc<Parked>>) -> &'static str {
    // Subscribe before counting, so a release that follows the count is never missed.
    let mut released = parked.release.subscribe();
    parked.held.fetch_add(1, Ordering::SeqCst);
    parked.arrived.fetch_add(1, Ordering::SeqCst);
    let _guard = HeldGuard(Arc::clone(&parked));
    let _ = released.wait_for(|r| *r).await;
    "ok"
}

/// The running park server.
#[derive(Debug)]
pub struct ParkServer {
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    parked: Arc<Parked>,
}

impl ParkServer {
    /// Starts the server on `127.0.0.1:0` with a listen backlog deep enough for a burst of
    /// thousands of connections.
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("park")
            .enable_all()
            .build()
            .expect("park server runtime");
        let parked = Arc::new(Parked {
            arrived: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            release: tokio::sync::watch::channel(false).0,
        });
        let listener = rt
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                socket.listen(16384)
            })
            .expect("bind the park server");
        let addr = listener.local_addr().expect("park server address");
        let app = axum::Router::new().route("/park", get(park)).with_state(Arc::clone(&parked));
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { rt, addr, parked }
    }

    pub fn held(&self) -> usize {
        self.parked.held.load(Ordering::SeqCst)
    }

    pub fn arrived(&self) -> usize {
        self.parked.arrived.load(Ordering::SeqCst)
    }

    /// Answers every held request, and every later one at once.
    pub fn release(&self) {
        self.parked.release.send_replace(true);
    }

    pub fn stop(self) {
        self.release();
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}
