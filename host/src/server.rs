//! `corral serve`: wires store, engine, registry, folder watch, job manager and HTTP API
//! together, recovers unfinished jobs, and shuts down gracefully.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting jobs (`503 shutting_down`), give running
//! jobs up to `server.shutdown_grace_ms` to finish, then stop. Whatever is still running
//! stays `running` in the store and is recovered at the next start (see `jobs::recovery`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;

use crate::config::{ConfigError, Policy};
use crate::engine::{self, EngineError, cache::CodeCache, registry::Registry};
use crate::jobs::{JobError, JobManager};
use crate::store::{Store, StoreError};

/// What `corral serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Overrides the policy's `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Overrides the policy's `server.grpc_listen` (SW4RM over gRPC; off when neither is set).
    pub grpc_listen: Option<SocketAddr>,
    pub agents_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Compiled-code cache; `<data_dir>/compiled` when absent. Must be a folder only this
    /// host (or hosts of the same operator) write to: its contents are trusted.
    pub cache_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    /// The key the secrets file is sealed with; without one the host has no secrets.
    pub secrets_key: Option<crate::secrets::Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "refusing to listen on {0} without API tokens: add [[principals]] with tokens to the policy file, or listen on 127.0.0.1"
    )]
    TokensRequired(SocketAddr),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Jobs(#[from] JobError),
    #[error(transparent)]
    Grpc(#[from] crate::sw4rm::GrpcError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
}

/// Everything a host runs jobs with, minus the HTTP server: the store, the engine with the
/// agents of `agents_dir` loaded (and watched), and the job manager. `corral serve` and the
/// in-process benchmark open it the same way.
#[derive(Debug)]
pub struct Runtime {
    pub manager: Arc<JobManager>,
    pub registry: Arc<Registry>,
    /// Agent files that were rejected at load.
    pub failures: Vec<EngineError>,
    _watch: engine::watcher::FolderWatch,
}

impl Runtime {
    /// Opens the store, builds the engine, loads and starts watching the agents folder.
    /// Does not recover unfinished jobs (see [`JobManager::recover`]).
    pub async fn open(
        policy: Arc<Policy>,
        agents_dir: &std::path::Path,
        data_dir: &std::path::Path,
        cache_dir: Option<&std::path::Path>,
        secrets_key: Option<crate::secrets::Key>,
    ) -> Result<Runtime, ServeError> {
        let store = Store::open(data_dir)?;
        let secrets = crate::secrets::SecretStore::open(data_dir, secrets_key)?;
        let engine = engine::new_engine(&policy.engine)?;
        engine::start_epoch_ticker(&engine, policy.engine.epoch_tick())
            .map_err(|e| ServeError::Setup(format!("cannot start the epoch thread: {e}")))?;
        let mut linker = Linker::new(&engine);
        crate::capabilities::add_to_linker(&mut linker)
            .map_err(|e| ServeError::Setup(format!("cannot link host imports: {e:#}")))?;
        let cache_dir = cache_dir.map_or_else(|| data_dir.join("compiled"), std::path::Path::to_path_buf);
        let cache = CodeCache::new(&engine, &cache_dir).map_err(|e| {
            ServeError::Setup(format!("cannot create the compiled-code cache in {}: {e}", cache_dir.display()))
        })?;
        let registry = Arc::new(Registry::new(engine, linker, cache, Some(store.clone())));

        std::fs::create_dir_all(agents_dir)
            .map_err(|e| ServeError::Setup(format!("cannot create agents folder {}: {e}", agents_dir.display())))?;
        let loader = Arc::clone(&registry);
        let dir = agents_dir.to_path_buf();
        let failures = tokio::task::spawn_blocking(move || loader.load_dir(&dir))
            .await
            .map_err(|e| ServeError::Setup(format!("agent loading panicked: {e}")))?;
        let _watch = engine::watcher::watch(agents_dir, Arc::clone(&registry))
            .map_err(|e| ServeError::Setup(format!("cannot watch {}: {e}", agents_dir.display())))?;
        let manager = JobManager::new(store, Arc::clone(&registry), policy, secrets).map_err(ServeError::Setup)?;
        Ok(Runtime { manager, registry, failures, _watch })
    }
}

/// Runs the host until SIGTERM / Ctrl-C.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let policy = match &opts.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::builtin()?,
    };
    let listen = opts.listen.unwrap_or(policy.server.listen);
    let grpc_listen = opts.grpc_listen.or(policy.server.grpc_listen);
    for addr in std::iter::once(listen).chain(grpc_listen) {
        if !addr.ip().is_loopback() && !policy.requires_tokens() {
            return Err(ServeError::TokensRequired(addr));
        }
    }
    let grpc_tls = grpc_tls(&policy)?;
    let telemetry = crate::telemetry::init(&policy.telemetry).map_err(ServeError::Setup)?;
    crate::metrics::set_enabled(policy.server.metrics);
    let policy = Arc::new(policy);
    let Runtime { manager, registry, failures, _watch } = Runtime::open(
        Arc::clone(&policy),
        &opts.agents_dir,
        &opts.data_dir,
        opts.cache_dir.as_deref(),
        opts.secrets_key,
    )
    .await?;
    let store = manager.store().clone();
    // The ASP identity exists from the first start on (`corral identity` shows it).
    let identity =
        crate::asp::identity::Identity::load_or_create(&opts.data_dir).map_err(|e| ServeError::Setup(e.to_string()))?;
    let recovered = manager.recover().await?;
    let redelivered = manager.messages().recover().await?;
    crate::retention::spawn(store.clone(), policy.retention.clone(), policy.messages.retention_ms);

    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| ServeError::Listen { addr: listen, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen { addr: listen, source })?;
    manager.add_listener(local);
    let (agents, _) = registry.list();
    tracing::info!(
        %local,
        agents = agents.len(),
        rejected = failures.len(),
        requeued = recovered.requeued,
        failed = recovered.failed,
        redelivered,
        asp_agent_id = %identity.agent_id,
        data = %opts.data_dir.display(),
        "corral ready"
    );

    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = match grpc_listen {
        Some(addr) => {
            let listener = crate::sw4rm::bind(&manager, addr).await?;
            tracing::info!(local = %listener.local, tls = grpc_tls.is_some(), "SW4RM gRPC ready");
            #[allow(clippy::print_stdout)]
            {
                println!("corral gRPC listening on {}", listener.local);
            }
            let shutdown = async {
                let _ = grpc_stopped.await;
            };
            Some(tokio::spawn(crate::sw4rm::serve(Arc::clone(&manager), listener, grpc_tls, shutdown)))
        }
        None => None,
    };

    let (swarm_stop, swarm_stopped) = tokio::sync::oneshot::channel::<()>();
    let swarm = match policy.swarm.listen {
        Some(addr) => {
            let stopped = async {
                let _ = swarm_stopped.await;
            };
            Some(start_swarm(&manager, &policy, &opts.data_dir, identity, addr, stopped).await?)
        }
        None => None,
    };

    // A machine-readable line for scripts and tests that listen on port 0 — the last thing
    // printed at start (after the gRPC and swarm lines, if any): once it is out, everything is bound.
    #[allow(clippy::print_stdout)]
    {
        println!("corral listening on http://{local}");
    }

    let app = crate::api::router(Arc::clone(&manager)).merge(crate::arcp::router(Arc::clone(&manager)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = crate::connections::ConnectionLimits {
        header_timeout: Duration::from_millis(policy.server.header_timeout_ms),
        max_connections: policy.server.max_connections,
    };
    let stopped = async {
        let _ = stop_rx.await;
    };
    // Open event streams would hold graceful shutdown forever; give them a moment.
    let server = tokio::spawn(crate::connections::serve(listener, app, limits, None, stopped, Duration::from_secs(1)));

    shutdown_signal().await;
    let grace = Duration::from_millis(policy.server.shutdown_grace_ms);
    tracing::info!(grace_ms = policy.server.shutdown_grace_ms, "shutting down: no new jobs; waiting for running jobs");
    let left = manager.shutdown(grace).await;
    if left > 0 {
        tracing::warn!(left, "jobs still running after the grace period; they will be recovered at the next start");
    }
    let _ = stop_tx.send(());
    let _ = grpc_stop.send(());
    let _ = swarm_stop.send(());
    if let Some((server, outbox)) = swarm {
        outbox.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if let Some(grpc) = grpc {
        let _ = tokio::time::timeout(Duration::from_secs(1), grpc).await;
    }
    drop(manager);
    if let Err(e) = store.close().await {
        tracing::error!(error = %e, "closing the store failed");
    }
    if let Some(telemetry) = telemetry {
        // Sends the spans still queued; blocks, so off the async workers.
        let _ = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || telemetry.shutdown()))
            .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts federation: the ASP endpoint over HTTPS on `addr` and the outbox. Prints
/// `corral swarm listening on <endpoint>` once bound.
async fn start_swarm(
    manager: &Arc<JobManager>,
    policy: &Policy,
    data_dir: &std::path::Path,
    identity: crate::asp::identity::Identity,
    addr: SocketAddr,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>), ServeError> {
    let config = &policy.swarm;
    let tls = crate::asp::tls::server_config(config, data_dir, addr).map_err(ServeError::Setup)?;
    let client = crate::asp::tls::client(config).map_err(ServeError::Setup)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
    manager.add_listener(local);
    let endpoint = config.endpoint.clone().unwrap_or_else(|| format!("https://{local}/swarm"));
    let federation = crate::asp::federation::Federation::new(
        identity,
        manager.store().clone(),
        config.clone(),
        endpoint.clone(),
        client,
        Arc::downgrade(manager),
    );
    manager.set_federation(Arc::clone(&federation));
    // Jobs and messages are recovered by now: hand over again what federation accepted last.
    let resumed = federation.resume().await.map_err(|e| ServeError::Setup(format!("resuming federation: {e}")))?;
    let outbox = crate::asp::outbox::spawn(Arc::clone(&federation));
    let limits = crate::connections::ConnectionLimits {
        header_timeout: Duration::from_millis(policy.server.header_timeout_ms),
        max_connections: policy.server.max_connections,
    };
    let app = crate::asp::http::router(federation);
    let server =
        tokio::spawn(crate::connections::serve(listener, app, limits, Some(tls), stopped, Duration::from_secs(1)));
    tracing::info!(%local, %endpoint, resumed, "ASP swarm endpoint ready");
    #[allow(clippy::print_stdout)]
    {
        println!("corral swarm listening on {endpoint}");
    }
    Ok((server, outbox))
}

/// The gRPC listener's TLS identity from the policy's PEM files, if configured.
fn grpc_tls(policy: &Policy) -> Result<Option<crate::sw4rm::Tls>, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServeError::Setup(format!("cannot read {}: {e}", path.display())))
    };
    match (&policy.server.grpc_tls_cert, &policy.server.grpc_tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(crate::sw4rm::Tls { cert_pem: read(cert)?, key_pem: read(key)? })),
        _ => Err(ServeError::Setup("give both server.grpc_tls_cert and server.grpc_tls_key, or neither".into())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
