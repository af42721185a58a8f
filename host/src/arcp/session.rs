//! One ARCP session: a WebSocket connection from `session.open` to close.
//!
//! Before the handshake only `session.open` is read; anything else is ignored (ARCP §6).
//! The handshake authenticates with the policy's tokens (`bearer`), or anonymously (`none`)
//! when the host has no tokens and the client asked for `anonymous`; capabilities are the
//! intersection of the client's and the host's, and what was not negotiated is refused, not
//! served. After it, every frame is answered: a type corral does not implement gets
//! `nack UNIMPLEMENTED` and the connection stays open; a malformed one `nack INVALID_ARGUMENT`.
//!
//! One writer task owns the socket's sending half: envelopes from the frame loop and from the
//! job followers queue to it (bounded, so a client that stops reading stalls its own followers
//! and nothing else), it stamps `session_id` and the session's `event_seq` (1, 2, … over the
//! envelopes ARCP counts), and it sends WebSocket pings. A connection that sends nothing for
//! `arcp.idle_timeout_ms` (not even a pong) is evicted. Jobs outlive their session: closing
//! the socket stops following them, not running them.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arcp_core::ids::{MessageId, SessionId};
use arcp_core::messages::{
    AgentInventory, AgentInventoryEntry, AuthScheme, CancelAcceptedPayload, CancelPayload, CancelRefusedPayload,
    CancelTargetKind, Capabilities, MessageType, PongPayload, RuntimeIdentity, SessionAcceptedPayload,
    SessionEvictedPayload, SessionOpenPayload, SessionPongPayload, SessionRejectedPayload,
};
use arcp_core::{Envelope, ErrorCode, RawEnvelope};
use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::invoke::{self, SessionContext};
use super::wire::{corral_job_id, nack, reply};
use super::{ArcpConfig, ArcpState};
use crate::jobs::JobError;

/// Envelopes queued for the writer; a full queue makes the senders wait.
const OUTBOUND_QUEUE: usize = 256;

/// The message types corral reads after the handshake. Any other type gets `UNIMPLEMENTED`;
/// one of these with a malformed payload gets `INVALID_ARGUMENT`.
const HANDLED: &[&str] =
    &["session.open", "session.close", "session.ping", "session.pong", "session.ack", "ping", "pong", "tool.invoke", "cancel"];

/// Serves one connection until it closes.
pub async fn run(state: ArcpState, socket: WebSocket) {
    let config = state.manager.policy().arcp.clone();
    let (sink, mut frames) = socket.split();
    let (outbound, queued) = mpsc::channel(OUTBOUND_QUEUE);
    let session_id = super::wire::new_session_id();
    let writer = tokio::spawn(write(sink, queued, session_id.clone(), config.clone()));
    let mut session = Session { state, config, outbound, session_id, open: None, followers: Vec::new() };
    loop {
        let frame = match tokio::time::timeout(session.config.idle_timeout(), frames.next()).await {
            Err(_idle) => {
                session.evict().await;
                break;
            }
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(frame))) => frame,
        };
        let flow = match frame {
            Message::Text(text) => session.frame(text.as_str()).await,
            Message::Binary(_) => session.binary().await,
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(_) => Flow::Close,
        };
        if flow == Flow::Close {
            break;
        }
    }
    for follower in session.followers.drain(..) {
        follower.abort();
    }
    drop(session);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// The authenticated half of a session.
struct Open {
    context: SessionContext,
    /// Gives the principal's session slot back when the session ends.
    _slot: SessionSlot,
}

struct Session {
    state: ArcpState,
    config: ArcpConfig,
    outbound: mpsc::Sender<Envelope>,
    session_id: SessionId,
    open: Option<Open>,
    followers: Vec<JoinHandle<()>>,
}

impl Session {
    async fn send(&self, envelope: Envelope) {
        let _ = self.outbound.send(envelope).await;
    }

    async fn frame(&mut self, text: &str) -> Flow {
        let raw: RawEnvelope = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) if self.open.is_some() => {
                self.send(nack(ErrorCode::InvalidArgument, format!("not an ARCP envelope: {e}"), None)).await;
                return Flow::Continue;
            }
            Err(_) => return Flow::Continue,
        };
        if self.open.is_none() && raw.type_name != "session.open" {
            return Flow::Continue; // traffic before the handshake is ignored
        }
        let (id, type_name) = (raw.id.clone(), raw.type_name.clone());
        let envelope = match raw.try_into_typed() {
            Ok(envelope) => envelope,
            Err(e) if HANDLED.contains(&type_name.as_str()) => {
                self.send(nack(ErrorCode::InvalidArgument, format!("malformed {type_name}: {e}"), Some(&id))).await;
                return Flow::Continue;
            }
            Err(_) => {
                self.send(unimplemented(&type_name, &id)).await;
                return Flow::Continue;
            }
        };
        match self.open.as_ref() {
            None => self.handshake(envelope).await,
            Some(_) => self.dispatch(envelope).await,
        }
    }

    async fn binary(&self) -> Flow {
        if self.open.is_some() {
            self.send(nack(ErrorCode::InvalidArgument, "ARCP envelopes are JSON text frames", None)).await;
        }
        Flow::Continue
    }

    async fn handshake(&mut self, envelope: Envelope) -> Flow {
        let MessageType::SessionOpen(open) = envelope.payload else { return Flow::Continue };
        let negotiated = negotiate(&open.capabilities, &self.runtime_capabilities());
        let principal = match self.authenticate(&open, &negotiated) {
            Ok(principal) => principal,
            Err(message) => return self.reject(ErrorCode::Unauthenticated, message, &envelope.id).await,
        };
        let Some(slot) = SessionSlot::take(&self.state, &principal, self.config.max_sessions_per_principal) else {
            let message = format!(
                "principal '{principal}' has {} sessions open (arcp.max_sessions_per_principal)",
                self.config.max_sessions_per_principal
            );
            return self.reject(ErrorCode::ResourceExhausted, message, &envelope.id).await;
        };
        let context = SessionContext {
            manager: Arc::clone(&self.state.manager),
            principal,
            outbound: self.outbound.clone(),
            streaming: negotiated.streaming == Some(true),
            following: Arc::new(AtomicUsize::new(0)),
            max_following: self.config.max_jobs_per_session,
        };
        self.open = Some(Open { context, _slot: slot });
        let accepted = SessionAcceptedPayload {
            session_id: self.session_id.clone(),
            runtime: RuntimeIdentity {
                kind: "corral".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                fingerprint: None,
                trust_level: None,
            },
            capabilities: negotiated,
            lease: None,
        };
        self.send(reply(MessageType::SessionAccepted(accepted), Some(&envelope.id))).await;
        Flow::Continue
    }

    /// The principal `open` authenticates as, or why not.
    fn authenticate(&self, open: &SessionOpenPayload, negotiated: &Capabilities) -> Result<String, String> {
        let policy = self.state.manager.policy();
        match open.auth.scheme {
            AuthScheme::Bearer => {
                let token = open.auth.token.as_deref().unwrap_or_default();
                policy.authenticate(Some(&format!("Bearer {token}"))).map_err(str::to_owned)
            }
            AuthScheme::None if negotiated.anonymous == Some(true) => Ok(crate::config::LOCAL_PRINCIPAL.to_owned()),
            AuthScheme::None if policy.requires_tokens() => {
                Err("this host requires a bearer token (anonymous sessions are off)".into())
            }
            AuthScheme::None => Err("an anonymous session needs the `anonymous` capability in session.open".into()),
            _ => Err("unsupported auth scheme: use `bearer` (or `none` with `anonymous` on a host without tokens)".into()),
        }
    }

    async fn reject(&self, code: ErrorCode, message: String, to: &MessageId) -> Flow {
        self.send(reply(MessageType::SessionRejected(SessionRejectedPayload { code, message }), Some(to))).await;
        Flow::Close
    }

    async fn evict(&self) {
        let reason = format!("nothing received for {} ms (arcp.idle_timeout_ms)", self.config.idle_timeout_ms);
        let evicted = SessionEvictedPayload { code: ErrorCode::HeartbeatLost, reason };
        self.send(reply(MessageType::SessionEvicted(evicted), None)).await;
    }

    /// What this host offers: streamed results, durable jobs, anonymous sessions when it has no
    /// tokens, and its agents with their versions.
    fn runtime_capabilities(&self) -> Capabilities {
        let (agents, _) = self.state.manager.registry().list();
        let inventory = agents
            .into_iter()
            .map(|a| AgentInventoryEntry {
                name: a.name,
                versions: a.versions.into_iter().map(|v| v.version).collect(),
                default: Some(a.latest),
            })
            .collect();
        Capabilities {
            streaming: Some(true),
            durable_jobs: Some(true),
            anonymous: (!self.state.manager.policy().requires_tokens()).then_some(true),
            agents: Some(AgentInventory::Rich(inventory)),
            ..Capabilities::default()
        }
    }

    async fn dispatch(&mut self, envelope: Envelope) -> Flow {
        let Some(open) = self.open.as_ref() else { return Flow::Continue };
        let id = envelope.id.clone();
        match envelope.payload {
            MessageType::ToolInvoke(payload) => {
                let key = envelope.idempotency_key.map(|k| k.as_str().to_owned());
                let context = open.context.clone();
                self.followers.retain(|f| !f.is_finished());
                if let Some(follower) = invoke::invoke(&context, &id, key, payload).await {
                    self.followers.push(follower);
                }
            }
            MessageType::Cancel(cancel) => self.cancel(cancel, &id).await,
            MessageType::SessionPing(ping) => {
                let pong = SessionPongPayload { ping_nonce: ping.nonce, received_at: chrono::Utc::now() };
                self.send(reply(MessageType::SessionPong(pong), Some(&id))).await;
            }
            MessageType::Ping(ping) => {
                self.send(reply(MessageType::Pong(PongPayload { nonce: ping.nonce }), Some(&id))).await;
            }
            MessageType::SessionClose(_) => return Flow::Close,
            MessageType::SessionOpen(_) => {
                self.send(nack(ErrorCode::FailedPrecondition, "the session is already open", Some(&id))).await;
            }
            MessageType::SessionAck(_) | MessageType::SessionPong(_) | MessageType::Pong(_) => {}
            other => self.send(unimplemented(other.type_name(), &id)).await,
        }
        Flow::Continue
    }

    /// `cancel.accepted` (queued before the job is told, so it precedes `job.cancelled`) or
    /// `cancel.refused`: not a job, not this principal's (indistinguishable from absent), or
    /// already finished.
    async fn cancel(&self, cancel: CancelPayload, id: &MessageId) {
        let refused = |reason: String| {
            let payload = CancelRefusedPayload { target_id: cancel.target_id.clone(), reason };
            reply(MessageType::CancelRefused(payload), Some(id))
        };
        let Some(open) = self.open.as_ref() else { return };
        if cancel.target != CancelTargetKind::Job {
            return self.send(refused("corral cancels jobs only (target: job)".into())).await;
        }
        let Some(job) = corral_job_id(&cancel.target_id) else {
            return self.send(refused(format!("'{}' is not a job id (job_…)", cancel.target_id))).await;
        };
        let manager = &open.context.manager;
        match manager.get(&open.context.principal, job).await {
            Ok(record) if record.status.is_terminal() => {
                return self.send(refused(format!("the job already finished as {}", record.status))).await;
            }
            Ok(_) => {}
            Err(JobError::NotFound(_)) => return self.send(refused("no such job for this principal".into())).await,
            Err(e) => return self.send(refused(e.to_string())).await,
        }
        let accepted = CancelAcceptedPayload { target_id: Some(cancel.target_id.clone()) };
        self.send(reply(MessageType::CancelAccepted(accepted), Some(id))).await;
        if let Err(e) = manager.request_cancel(&open.context.principal, job).await {
            tracing::debug!(job, error = %e, "cancel after cancel.accepted found the job finished");
        }
    }
}

fn unimplemented(type_name: &str, id: &MessageId) -> Envelope {
    let shown: String = type_name.chars().take(64).collect();
    nack(ErrorCode::Unimplemented, format!("corral does not implement `{shown}` (see docs/arcp.md)"), Some(id))
}

/// ARCP's negotiation: a feature is on iff both sides say so; off if only one mentions it;
/// absent if neither does. The inventory and other descriptions are the host's.
fn negotiate(client: &Capabilities, runtime: &Capabilities) -> Capabilities {
    let both = |c: Option<bool>, r: Option<bool>| match (c, r) {
        (None, None) => None,
        (Some(true), Some(true)) => Some(true),
        _ => Some(false),
    };
    Capabilities {
        streaming: both(client.streaming, runtime.streaming),
        durable_jobs: both(client.durable_jobs, runtime.durable_jobs),
        checkpoints: both(client.checkpoints, runtime.checkpoints),
        binary_streams: both(client.binary_streams, runtime.binary_streams),
        agent_handoff: both(client.agent_handoff, runtime.agent_handoff),
        model_use: both(client.model_use, runtime.model_use),
        provisioned_credentials: both(client.provisioned_credentials, runtime.provisioned_credentials),
        artifacts: both(client.artifacts, runtime.artifacts),
        subscriptions: both(client.subscriptions, runtime.subscriptions),
        scheduled_jobs: both(client.scheduled_jobs, runtime.scheduled_jobs),
        interrupt: both(client.interrupt, runtime.interrupt),
        anonymous: both(client.anonymous, runtime.anonymous),
        extensions: client.extensions.iter().filter(|e| runtime.extensions.contains(e)).cloned().collect(),
        agents: runtime.agents.clone(),
        ..Capabilities::default()
    }
}

/// A principal's count of open sessions, held while the session is open.
struct SessionSlot {
    state: ArcpState,
    principal: String,
}

impl SessionSlot {
    fn take(state: &ArcpState, principal: &str, max: usize) -> Option<SessionSlot> {
        let mut sessions = state.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = sessions.entry(principal.to_owned()).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(SessionSlot { state: state.clone(), principal: principal.to_owned() })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut sessions = self.state.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = sessions.get_mut(&self.principal) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                sessions.remove(&self.principal);
            }
        }
    }
}

/// The writer: sends queued envelopes (numbered) and keep-alive pings until the queue closes
/// or the socket fails.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut queued: mpsc::Receiver<Envelope>,
    session_id: SessionId,
    config: ArcpConfig,
) {
    let mut event_seq = 0u64;
    let mut ping = tokio::time::interval(config.ping_interval());
    ping.tick().await;
    loop {
        let envelope = tokio::select! {
            next = queued.recv() => match next {
                Some(envelope) => envelope,
                None => break,
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let mut envelope = envelope;
        envelope.session_id = Some(session_id.clone());
        if envelope.payload.is_countable_event() {
            event_seq += 1;
            envelope.event_seq = Some(event_seq);
        }
        let text = match serde_json::to_string(&envelope) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ARCP envelope");
                continue;
            }
        };
        if sink.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}
