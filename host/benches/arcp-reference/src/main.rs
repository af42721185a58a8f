//! The reference ARCP runtime (`arcp-runtime` 2.0.0, unmodified) serving one tool, `echo`,
//! which returns `{"echo": arguments}` like corral's `echo` agent: native Rust in the server's
//! process, no sandbox. Listens on 127.0.0.1 on a free port (or the one given) and prints
//! `listening on ws://ADDR` once ready. Bearer token: `bench-token`.

use std::sync::Arc;

use arcp_core::ARCPError;
use arcp_core::messages::Capabilities;
use arcp_core::transport::websocket::WebSocketTransport;
use arcp_runtime::auth::BearerAuthenticator;
use arcp_runtime::runtime::{ARCPRuntime, ToolContext, ToolHandler, ToolRegistryBuilder};
use async_trait::async_trait;

struct Echo;

#[async_trait]
impl ToolHandler for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn invoke(&self, arguments: serde_json::Value, _ctx: ToolContext) -> Result<serde_json::Value, ARCPError> {
        Ok(serde_json::json!({ "echo": arguments }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let runtime = ARCPRuntime::builder()
        .with_authenticator(Box::new(BearerAuthenticator::new().with_token("bench-token", "bench")))
        .with_tools(ToolRegistryBuilder::new().with(Arc::new(Echo)).build())
        .with_capabilities(Capabilities { streaming: Some(true), ..Default::default() })
        .build()
        .await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let runtime = runtime.clone();
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async(socket).await {
                let _ = runtime.serve_connection(WebSocketTransport::accept_stream(ws)).await;
            }
        });
    }
}
