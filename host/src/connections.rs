//! Accepting HTTP connections: the API, ARCP's WebSocket and `/metrics` share one listener.
//!
//! Why not `axum::serve`: it has no header or idle timeout and no bound on open connections,
//! so a slow client (slowloris) could hold sockets and tasks forever. Here each connection is
//! served by hyper-util's auto (HTTP/1 + HTTP/2) builder with:
//!
//! - `server.header_timeout_ms`: a request's headers must arrive within it, and on a
//!   keep-alive HTTP/1 connection the wait for the next request counts too (hyper runs one
//!   timer from the end of a response to the end of the next request's headers), so an idle
//!   connection is closed after it. Bodies and responses are not timed by it: a long
//!   `?wait=` or an event stream is not cut.
//! - HTTP/2 keep-alive pings, closing connections whose peer stopped answering.
//! - `server.max_connections`: beyond it the listener stops accepting until one closes; new
//!   clients wait in the kernel's backlog instead of exhausting file descriptors.
//!
//! Shutdown is graceful: in-flight requests finish, idle connections close.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How connections are bounded (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish (for
/// at most `drain`). With `tls`, every connection is a TLS one (its handshake must finish
/// within the header timeout).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = std::sync::Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A response is written as one small segment; Nagle would hold it for the client's
        // delayed ACK (up to 40 ms) whenever the previous one is still unacknowledged.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let Some(acceptor) = tls.clone() else {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service.clone()).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
            continue;
        };
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::debug!("open connections still busy after the drain period; closing them");
    }
}
