//! ARCP v1.1 over WebSocket (`GET /arcp`): the third front door on the job engine.
//!
//! A codec and transport, nothing more: a `tool.invoke` is [`JobManager::submit`] (the same
//! resolution, lease intersection, idempotency table and durable job row as `POST /v1/jobs`),
//! its events are the job's stored events followed with [`crate::jobs::follow::EventFollower`]
//! (the same gapless log the SSE stream reads) and mapped to ARCP envelopes, `cancel` is
//! [`JobManager::cancel`], and the principal comes from [`crate::config::Policy::authenticate`],
//! as on every front door. Wire types are `arcp-core`'s (types only); the session state machine
//! is ours. What the ARCP spec asks for and what is done where is in `docs/arcp.md`.
//!
//! - [`session`]: one WebSocket connection — handshake, capability negotiation, the frame loop,
//!   liveness.
//! - [`writer`]: the task that owns the socket's sending half: `event_seq`, the ack window,
//!   pings, and the traffic feed `subscribe` reads.
//! - [`invoke`]: `tool.invoke` → a job, and a job's events → `job.*` envelopes.
//! - [`streams`]: `session.list_jobs`, `job.subscribe`, `subscribe`, `resume`.
//! - [`wire`]: envelope builders and the mapping of corral's errors to ARCP error codes.

mod budget;
mod invoke;
mod session;
mod streams;
mod wire;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use crate::jobs::JobManager;

/// The `[arcp]` table of the policy: bounds of one connection and of a principal's sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArcpConfig {
    /// Sessions one principal may have open at once; beyond, `session.rejected`
    /// (`RESOURCE_EXHAUSTED`).
    pub max_sessions_per_principal: usize,
    /// Jobs one session may be following at once; beyond, `job.failed` (`RESOURCE_EXHAUSTED`).
    pub max_jobs_per_session: usize,
    /// Largest WebSocket frame (and message) accepted, in bytes.
    pub max_frame_bytes: usize,
    /// A connection that sends nothing (no frame, no WebSocket pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// How often the host pings (WebSocket ping frames) to keep the connection alive and to
    /// notice a dead one.
    pub ping_interval_ms: u64,
    /// Counted envelopes a session may have unacknowledged (`session.ack`) before the host
    /// holds further ones; 0 turns acknowledgements off (the reference client never acks).
    pub ack_window: u64,
}

impl Default for ArcpConfig {
    fn default() -> Self {
        ArcpConfig {
            max_sessions_per_principal: 64,
            max_jobs_per_session: 256,
            max_frame_bytes: 1 << 20,
            idle_timeout_ms: 120_000,
            ping_interval_ms: 20_000,
            ack_window: 0,
        }
    }
}

impl ArcpConfig {
    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1_000))
    }

    fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(100))
    }
}

/// What every ARCP connection of this host shares.
#[derive(Debug, Clone)]
pub struct ArcpState {
    manager: Arc<JobManager>,
    /// Open sessions per principal (for `max_sessions_per_principal`).
    sessions: Arc<Mutex<HashMap<String, usize>>>,
    /// What every session sends, for `subscribe` (filtered by principal on the way out).
    traffic: tokio::sync::broadcast::Sender<Arc<writer::Traffic>>,
}

/// Envelopes a slow `subscribe` may fall behind before it misses some (and is told).
const TRAFFIC_BACKLOG: usize = 1024;

/// The `/arcp` route.
pub fn router(manager: Arc<JobManager>) -> Router {
    let (traffic, _) = tokio::sync::broadcast::channel(TRAFFIC_BACKLOG);
    let state = ArcpState { manager, sessions: Arc::new(Mutex::new(HashMap::new())), traffic };
    Router::new().route("/arcp", get(upgrade)).with_state(state)
}

async fn upgrade(State(state): State<ArcpState>, ws: WebSocketUpgrade) -> Response {
    let max = state.manager.policy().arcp.max_frame_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| session::run(state, socket))
}
