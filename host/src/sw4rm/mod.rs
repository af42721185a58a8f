//! SW4RM over gRPC: `sw4rm.router.RouterService`, `sw4rm.registry.RegistryService` and
//! `grpc.health.v1.Health` on their own listen address, so SW4RM's Python SDK (and any SW4RM
//! client) can use corral as its router and registry. A codec over the message plane — it
//! translates protobuf to [`crate::messages`] calls and back, and holds no state of its own.
//!
//! The mapping (also `docs/sw4rm.md`):
//!
//! | SW4RM | corral |
//! |---|---|
//! | `SendMessage(envelope)` | [`MessagePlane::send`] as the producer `envelope.producer_id` of the caller's principal; answered after RECEIVED is committed |
//! | recipient (SW4RM has none) | `envelope.recipient` (field 200, corral's), else metadata `x-corral-recipient`, else a JSON payload's top-level `"recipient"` or `"to"`; `topic:<name>` for a topic; none → NO_ROUTE |
//! | `StreamIncoming(agent_id)` | [`MessagePlane::stream`]: the agent's deliveries, each with its `seq` |
//! | `AckDelivery(agent_id, seq, …)` | [`MessagePlane::release`] (DELIVERED → FULFILLED, PERMANENT_FAILURE → FAILED) |
//! | ACKNOWLEDGEMENT envelopes | update the named message's stages and are forwarded to its producer; a terminal one also releases its delivery (sw4rm-sdk 0.6.0 never calls `AckDelivery`) |
//! | `RegisterAgent` / `Heartbeat` / `DeregisterAgent` | [`MessagePlane::register`] / `heartbeat` / `deregister` |
//! | bearer token | metadata `authorization: Bearer <token>`, the same principals as HTTP |
//!
//! [`MessagePlane::send`]: crate::messages::MessagePlane::send
//! [`MessagePlane::stream`]: crate::messages::MessagePlane::stream
//! [`MessagePlane::release`]: crate::messages::MessagePlane::release
//! [`MessagePlane::register`]: crate::messages::MessagePlane::register

mod codec;
mod registry;
mod router;

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::jobs::JobManager;

/// The code generated from `proto/sw4rm/*.proto` (see `host/build.rs`).
#[allow(clippy::all, clippy::pedantic, missing_docs, missing_debug_implementations, unreachable_pub)]
pub mod proto {
    pub mod common {
        tonic::include_proto!("sw4rm.common");
    }
    pub mod router {
        tonic::include_proto!("sw4rm.router");
    }
    pub mod registry {
        tonic::include_proto!("sw4rm.registry");
    }
}

/// Largest gRPC message accepted (an envelope with the largest payload the plane takes, plus
/// room for its fields).
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// TLS for the gRPC listener, from PEM files named in the policy.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Why the gRPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("invalid gRPC TLS configuration: {0}")]
    Tls(String),
}

/// A bound gRPC listener, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::TcpListener,
    pub local: SocketAddr,
}

/// Binds `addr` (port 0 picks a free one) and registers it as one of the host's own addresses.
pub async fn bind(manager: &JobManager, addr: SocketAddr) -> Result<Listener, GrpcError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GrpcError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| GrpcError::Listen { addr, source })?;
    manager.add_listener(local);
    Ok(Listener { listener, local })
}

/// Serves the SW4RM services and health on `listener` until `shutdown` resolves.
pub async fn serve(
    manager: Arc<JobManager>,
    listener: Listener,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<proto::router::router_service_server::RouterServiceServer<router::Router>>().await;
    health.set_serving::<proto::registry::registry_service_server::RegistryServiceServer<registry::Registry>>().await;
    let router = proto::router::router_service_server::RouterServiceServer::new(router::Router {
        manager: Arc::clone(&manager),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let registry = proto::registry::registry_service_server::RegistryServiceServer::new(registry::Registry { manager })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let identity = Identity::from_pem(tls.cert_pem, tls.key_pem);
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(identity)).map_err(|e| GrpcError::Tls(e.to_string()))?;
    }
    let incoming = tokio_stream_from(listener.listener);
    let result = builder
        .add_service(health_service)
        .add_service(router)
        .add_service(registry)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server stopped");
    }
    Ok(())
}

/// Accepted connections of `listener` as the stream tonic serves, with TCP_NODELAY.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a gRPC connection");
            }
            stream
        });
        Some((accepted, listener))
    })
}

/// The caller's principal, from `authorization` metadata (the same tokens as HTTP).
fn principal(manager: &JobManager, metadata: &tonic::metadata::MetadataMap) -> Result<String, tonic::Status> {
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
    manager.policy().authenticate(header).map_err(tonic::Status::unauthenticated)
}
