//! One ARCP session: a WebSocket connection from `session.open` to close.
//!
//! Before the handshake only `session.open` is read; anything else is ignored (ARCP §6).
//! The handshake authenticates with the policy's tokens (`bearer`), or anonymously (`none`)
//! when the host has no tokens and the client asked for `anonymous`; capabilities are the
//! intersection of the client's and the host's, and what was not negotiated is refused, not
//! served. After it, every frame is answered: a type corral does not implement gets
//! `nack UNIMPLEMENTED` and the connection stays open; a malformed one `nack INVALID_ARGUMENT`.
//!
//! Everything the session sends goes through its writer (`writer.rs`). A connection that sends
//! nothing for `arcp.idle_timeout_ms` (not even a pong to the writer's pings) is evicted. Jobs
//! outlive their session: closing the socket stops following them, not running them.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use arcp_core::ids::{MessageId, SessionId, SubscriptionId};
use arcp_core::messages::{
    AckPayload, AgentInventory, AgentInventoryEntry, AuthScheme, CancelAcceptedPayload, CancelPayload,
    CancelRefusedPayload, CancelTargetKind, Capabilities, MessageType, PongPayload, RuntimeIdentity,
    SessionAcceptedPayload, SessionEvictedPayload, SessionOpenPayload, SessionPongPayload, SessionRejectedPayload,
    SubscribeClosedPayload,
};
use arcp_core::{Envelope, ErrorCode, RawEnvelope};
use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::invoke::{self, Followed, SessionContext};
use super::streams;
use super::wire::{corral_job_id, nack, reply};
use super::writer::{OUTBOUND_QUEUE, Writer};
use super::{ArcpConfig, ArcpState};
use crate::jobs::JobError;

/// The message types corral reads after the handshake. Any other type gets `UNIMPLEMENTED`;
/// one of these with a malformed payload gets `INVALID_ARGUMENT`.
const HANDLED: &[&str] = &[
    "session.open",
    "session.close",
    "session.ping",
    "session.pong",
    "session.ack",
    "session.list_jobs",
    "ping",
    "pong",
    "tool.invoke",
    "cancel",
    "job.subscribe",
    "job.unsubscribe",
    "subscribe",
    "unsubscribe",
    "resume",
];

/// Serves one connection until it closes.
pub async fn run(state: ArcpState, socket: WebSocket) {
    let config = state.manager.policy().arcp.clone();
    let (sink, mut frames) = socket.split();
    let (outbound, queued) = mpsc::channel(OUTBOUND_QUEUE);
    let (acked, acked_rx) = watch::channel(0u64);
    let session_id = super::wire::new_session_id();
    let principal = Arc::new(OnceLock::new());
    let writer = Writer {
        sink,
        queued,
        acked: acked_rx,
        session_id: session_id.clone(),
        principal: Arc::clone(&principal),
        traffic: state.traffic.clone(),
        config: config.clone(),
    };
    let writer = tokio::spawn(writer.run());
    let mut session = Session {
        state,
        config,
        outbound,
        acked,
        session_id,
        principal,
        open: None,
        followers: Vec::new(),
        subscriptions: Vec::new(),
    };
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
    for (_, follower) in session.followers.drain(..) {
        follower.abort();
    }
    for (_, subscription) in session.subscriptions.drain(..) {
        subscription.abort();
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
    /// `subscriptions` was negotiated (`job.subscribe`, `subscribe` are served).
    subscriptions: bool,
    /// Gives the principal's session slot back when the session ends.
    _slot: SessionSlot,
}

struct Session {
    state: ArcpState,
    config: ArcpConfig,
    outbound: mpsc::Sender<Envelope>,
    /// The client's `session.ack{last_processed_seq}`, for the writer's window.
    acked: watch::Sender<u64>,
    session_id: SessionId,
    /// Set at the handshake (the writer publishes traffic under it).
    principal: Arc<OnceLock<String>>,
    open: Option<Open>,
    /// The jobs this session follows.
    followers: Vec<Followed>,
    /// Its `subscribe` feeds.
    subscriptions: Vec<(SubscriptionId, JoinHandle<()>)>,
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
        let _ = self.principal.set(principal.clone());
        let context = SessionContext {
            manager: Arc::clone(&self.state.manager),
            session_id: self.session_id.as_str().to_owned(),
            principal,
            outbound: self.outbound.clone(),
            streaming: negotiated.streaming == Some(true),
            following: Arc::new(AtomicUsize::new(0)),
            max_following: self.config.max_jobs_per_session,
        };
        let subscriptions = negotiated.subscriptions == Some(true);
        self.open = Some(Open { context, subscriptions, _slot: slot });
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
            _ => {
                Err("unsupported auth scheme: use `bearer` (or `none` with `anonymous` on a host without tokens)"
                    .into())
            }
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
            subscriptions: Some(true),
            anonymous: (!self.state.manager.policy().requires_tokens()).then_some(true),
            agents: Some(AgentInventory::Rich(inventory)),
            ..Capabilities::default()
        }
    }

    async fn dispatch(&mut self, envelope: Envelope) -> Flow {
        let Some(open) = self.open.as_ref() else { return Flow::Continue };
        let context = open.context.clone();
        let id = envelope.id.clone();
        self.followers.retain(|(_, f)| !f.is_finished());
        match envelope.payload {
            MessageType::ToolInvoke(payload) => {
                let key = envelope.idempotency_key.map(|k| k.as_str().to_owned());
                if let Some(followed) = invoke::invoke(&context, &id, key, payload).await {
                    self.followers.push(followed);
                }
            }
            MessageType::SessionListJobs(request) => self.send(streams::list_jobs(&context, &id, request).await).await,
            MessageType::Resume(request) => match streams::resume(&context, &id, request).await {
                Ok(followers) => self.followers.extend(followers),
                Err(refusal) => self.send(refusal).await,
            },
            MessageType::SessionAck(ack) => {
                self.acked.send_if_modified(|last| {
                    let newer = ack.last_processed_seq > *last;
                    if newer {
                        *last = ack.last_processed_seq;
                    }
                    newer
                });
            }
            MessageType::JobSubscribe(_)
            | MessageType::JobUnsubscribe(_)
            | MessageType::Subscribe(_)
            | MessageType::Unsubscribe(_)
                if !open.subscriptions =>
            {
                let message = "`subscriptions` was not negotiated in session.open";
                self.send(nack(ErrorCode::FailedPrecondition, message, Some(&id))).await;
            }
            MessageType::JobSubscribe(request) => match streams::job_subscribe(&context, &id, request).await {
                Ok(follower) => self.followers.push(follower),
                Err(refusal) => self.send(refusal).await,
            },
            MessageType::JobUnsubscribe(request) => {
                let job = corral_job_id(request.job_id.as_str()).unwrap_or_default().to_owned();
                let before = self.followers.len();
                self.followers.retain(|(j, f)| {
                    let keep = j.get() != Some(&job);
                    if !keep {
                        f.abort();
                    }
                    keep
                });
                if before == self.followers.len() {
                    self.send(nack(ErrorCode::NotFound, "this session does not follow that job", Some(&id))).await;
                } else {
                    self.send(reply(MessageType::Ack(AckPayload { note: None }), Some(&id))).await;
                }
            }
            MessageType::Subscribe(request) => {
                match streams::subscribe(&context, &self.state.traffic, &id, request).await {
                    Ok(subscription) => self.subscriptions.push(subscription),
                    Err(refusal) => self.send(refusal).await,
                }
            }
            MessageType::Unsubscribe(request) => {
                let Some(at) = self.subscriptions.iter().position(|(s, _)| *s == request.subscription_id) else {
                    self.send(nack(ErrorCode::NotFound, "no such subscription in this session", Some(&id))).await;
                    return Flow::Continue;
                };
                let (subscription_id, task) = self.subscriptions.swap_remove(at);
                task.abort();
                let closed =
                    SubscribeClosedPayload { subscription_id, code: ErrorCode::Ok, reason: "unsubscribed".into() };
                self.send(reply(MessageType::SubscribeClosed(closed), Some(&id))).await;
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
            MessageType::SessionPong(_) | MessageType::Pong(_) => {}
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
