//! External agents: processes outside the host that register, heartbeat, and receive their
//! messages through a stream with explicit delivery ACKs (the semantics of SW4RM's
//! `StreamIncoming` + `AckDelivery`, here over HTTP; gRPC is another codec over the same calls).
//!
//! - A registration belongs to the principal that made it: only that principal may heartbeat,
//!   stream, release or deregister it, and see the messages routed to it.
//! - An agent is *available* while a stream is open or its last heartbeat is younger than
//!   `messages.heartbeat_timeout_ms`. Sends to an unavailable agent are refused with
//!   AGENT_UNAVAILABLE; messages already queued for it are kept.
//! - Each streamed message gets a `seq` and is READ; it stays *in flight* until the agent
//!   releases it with an outcome ([`MessagePlane::release`]). Only the recipient can release its
//!   messages. An unreleased message comes back when its delivery lease (the ack timeout)
//!   lapses — as a new attempt, after the backoff — or at once, as the same attempt, when the
//!   stream it went out on closes (a reconnect gets it again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::envelope::{AckStage, CommClass, ErrorCode};
use super::inbox::Queued;
use super::route::new_id;
use super::{MessagePlane, deliver};
use crate::store::{ExternalAgentRecord, MessageRecord, MessageTransition};

/// What an external agent registers (SW4RM's `AgentDescriptor`, the parts corral uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAgent {
    /// Unique id: 1–128 characters of `[A-Za-z0-9._:-]`, not a loaded agent's name.
    pub agent_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Topics it subscribes to.
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub communication_class: CommClass,
}

/// How an external agent releases a streamed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Release {
    Fulfilled,
    Rejected {
        #[serde(default = "validation_error")]
        code: ErrorCode,
        #[serde(default)]
        note: String,
    },
    Failed {
        #[serde(default)]
        note: String,
    },
}

fn validation_error() -> ErrorCode {
    ErrorCode::ValidationError
}

/// One streamed message: its delivery `seq` (for the release) and the message.
#[derive(Debug, Clone)]
pub struct StreamItem {
    pub seq: i64,
    pub message: MessageRecord,
}

/// Why a registry call was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("agent id '{0}' is taken (by a loaded agent or another principal's registration)")]
    Taken(String),
    #[error("no external agent '{0}' is registered for this principal")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A streamed message not released yet.
#[derive(Debug, Clone)]
struct InFlight {
    queued: Queued,
    /// Which stream it went out on.
    stream: u64,
}

#[derive(Debug)]
struct State {
    agent: ExternalAgent,
    principal: String,
    registered_at: i64,
    last_heartbeat: Option<i64>,
    streams: usize,
    notify: Arc<Notify>,
    in_flight: HashMap<i64, InFlight>,
}

/// The registered external agents, in memory (registrations are also in the store).
#[derive(Debug, Default)]
pub(super) struct Externals {
    agents: HashMap<String, State>,
}

impl Externals {
    pub(super) fn contains(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    pub(super) fn owner(&self, id: &str) -> Option<&str> {
        self.agents.get(id).map(|s| s.principal.as_str())
    }

    pub(super) fn owned_by(&self, principal: &str) -> Vec<String> {
        self.agents.iter().filter(|(_, s)| s.principal == principal).map(|(id, _)| id.clone()).collect()
    }

    pub(super) fn is_available(&self, id: &str, now: i64, timeout_ms: u64) -> bool {
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        self.agents
            .get(id)
            .is_some_and(|s| s.streams > 0 || s.last_heartbeat.is_some_and(|t| now.saturating_sub(t) <= timeout))
    }

    pub(super) fn subscribers(&self, topic: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, s)| s.agent.topics.iter().any(|t| t == topic))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub(super) fn with_capability(
        &self,
        capability: Option<&str>,
        now: i64,
        timeout_ms: u64,
    ) -> Vec<(ExternalAgent, bool)> {
        let mut out: Vec<(ExternalAgent, bool)> = self
            .agents
            .iter()
            .filter(|(_, s)| capability.is_none_or(|c| s.agent.capabilities.iter().any(|x| x == c)))
            .map(|(id, s)| (s.agent.clone(), self.is_available(id, now, timeout_ms)))
            .collect();
        out.sort_by(|a, b| a.0.agent_id.cmp(&b.0.agent_id));
        out
    }

    pub(super) fn notify(&self, id: &str) {
        if let Some(s) = self.agents.get(id) {
            s.notify.notify_one();
        }
    }

    /// A registration found in the store at start: unavailable until it heartbeats or streams.
    pub(super) fn restore(&mut self, record: ExternalAgentRecord) {
        match serde_json::from_value::<ExternalAgent>(record.descriptor) {
            Ok(agent) => {
                self.agents.insert(
                    record.id,
                    State {
                        agent,
                        principal: record.principal,
                        registered_at: record.registered_at,
                        last_heartbeat: None,
                        streams: 0,
                        notify: Arc::new(Notify::new()),
                        in_flight: HashMap::new(),
                    },
                );
            }
            Err(e) => {
                tracing::warn!(agent = %record.id, error = %e, "stored external agent registration unreadable; ignored")
            }
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

impl MessagePlane {
    /// Registers (or re-registers) an external agent for `principal`; it is available at once.
    pub async fn register(&self, principal: &str, agent: ExternalAgent) -> Result<(), RegistryError> {
        if !valid_id(&agent.agent_id) {
            return Err(RegistryError::Invalid(format!(
                "agent_id '{}' must be 1-128 characters of [A-Za-z0-9._:-]",
                super::envelope::check_field("agent_id", &agent.agent_id)
                    .err()
                    .unwrap_or_else(|| agent.agent_id.clone())
            )));
        }
        for (what, list) in [("capabilities", &agent.capabilities), ("topics", &agent.topics)] {
            if list.len() > 64 || list.iter().any(|t| t.is_empty() || super::envelope::check_field(what, t).is_err()) {
                return Err(RegistryError::Invalid(format!("{what}: at most 64 non-empty names of at most 256 bytes")));
            }
        }
        if self.registry.resolve(&agent.agent_id).is_ok() {
            return Err(RegistryError::Taken(agent.agent_id));
        }
        if self.lock().externals.owner(&agent.agent_id).is_some_and(|owner| owner != principal) {
            return Err(RegistryError::Taken(agent.agent_id));
        }
        let now = crate::now_ms();
        let descriptor = serde_json::to_value(&agent).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        self.store
            .upsert_external_agent(ExternalAgentRecord {
                id: agent.agent_id.clone(),
                principal: principal.to_owned(),
                descriptor,
                registered_at: now,
            })
            .await?;
        let mut state = self.lock();
        let entry = state.externals.agents.entry(agent.agent_id.clone()).or_insert_with(|| State {
            agent: agent.clone(),
            principal: principal.to_owned(),
            registered_at: now,
            last_heartbeat: None,
            streams: 0,
            notify: Arc::new(Notify::new()),
            in_flight: HashMap::new(),
        });
        entry.agent = agent;
        entry.registered_at = now;
        entry.last_heartbeat = Some(now);
        Ok(())
    }

    /// Marks an external agent alive.
    pub fn heartbeat(&self, principal: &str, id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        match state.externals.agents.get_mut(id) {
            Some(s) if s.principal == principal => {
                s.last_heartbeat = Some(crate::now_ms());
                Ok(())
            }
            _ => Err(RegistryError::NotFound(id.to_owned())),
        }
    }

    /// Removes a registration. Messages already queued for it stay in the store (until their
    /// TTL, or a new registration with the same id streams them).
    pub async fn deregister(&self, principal: &str, id: &str) -> Result<(), RegistryError> {
        if self.lock().externals.owner(id) != Some(principal) {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.store.remove_external_agent(id).await?;
        if let Some(s) = self.lock().externals.agents.remove(id) {
            s.notify.notify_waiters();
        }
        Ok(())
    }

    /// The external agents (optionally with a capability), each with whether it is available.
    pub fn external_agents(&self, capability: Option<&str>) -> Vec<(ExternalAgent, bool)> {
        self.lock().externals.with_capability(capability, crate::now_ms(), self.config().heartbeat_timeout_ms)
    }

    /// Opens `id`'s stream: the next queued message, marked READ and in flight under `seq`.
    /// A new stream takes over what earlier streams of the agent have in flight (a client that
    /// reconnects before the host noticed the old connection die gets those messages again,
    /// first, under new seqs; releases under the old seqs then return `false`). Dropping the
    /// stream returns its unreleased messages to the inbox.
    pub fn stream(self: &Arc<Self>, principal: &str, id: &str) -> Result<Stream, RegistryError> {
        let mut state = self.lock();
        let stream = self.next_counter();
        let (notify, orphans) = match state.externals.agents.get_mut(id) {
            Some(s) if s.principal == principal => {
                s.streams += 1;
                // What earlier streams left unreleased and is not covered by an open stream's
                // lease is handed out again first.
                let orphans: Vec<i64> = s.in_flight.keys().copied().collect();
                let items: Vec<Queued> =
                    orphans.iter().filter_map(|seq| s.in_flight.remove(seq)).map(|f| f.queued).collect();
                (Arc::clone(&s.notify), items)
            }
            _ => return Err(RegistryError::NotFound(id.to_owned())),
        };
        let inbox = state.inboxes.entry(id.to_owned()).or_default();
        for queued in orphans.into_iter().rev() {
            inbox.in_flight = inbox.in_flight.saturating_sub(1);
            inbox.push_front(queued);
        }
        drop(state);
        Ok(Stream { plane: Arc::clone(self), agent: id.to_owned(), stream, notify })
    }

    /// Releases a streamed message with its outcome. `Ok(false)`: no such delivery in flight
    /// for this agent (already released, its lease lapsed, or never streamed) — a late release
    /// never changes a finished attempt.
    pub async fn release(
        self: &Arc<Self>,
        principal: &str,
        id: &str,
        seq: i64,
        outcome: Release,
    ) -> Result<bool, RegistryError> {
        let taken = {
            let mut state = self.lock();
            match state.externals.agents.get_mut(id) {
                Some(s) if s.principal == principal => s.in_flight.remove(&seq),
                _ => return Err(RegistryError::NotFound(id.to_owned())),
            }
        };
        let Some(flight) = taken else { return Ok(false) };
        let now = crate::now_ms();
        let t = MessageTransition::new(&[AckStage::Read], AckStage::Fulfilled, now).attempt(&flight.queued.attempt_id);
        let t = match outcome {
            Release::Fulfilled => t,
            Release::Rejected { code, note } => MessageTransition { to: AckStage::Rejected, ..t }.code(code).note(note),
            Release::Failed { note } => {
                MessageTransition { to: AckStage::Failed, ..t }.code(ErrorCode::InternalError).note(note)
            }
        };
        let updated = self.store.transition_message(&flight.queued.id, t).await?;
        self.settled(id, 1);
        if let Some(state) = &updated
            && let Some(m) = flight.queued.record.as_deref().filter(|m| m.delivery.require_ack)
        {
            let done = m.clone().with_state(state);
            deliver::send_ack(self, &done, done.stage).await;
        }
        Ok(updated.is_some())
    }

    /// A terminal ACK envelope ended message `id`: forget its delivery (no redelivery) and
    /// free its place in the inbox.
    pub(super) fn release_acknowledged(self: &Arc<Self>, agent: &str, id: &str) {
        let (in_flight, queued) = {
            let mut state = self.lock();
            let in_flight = state.externals.agents.get_mut(agent).is_some_and(|s| {
                let seqs: Vec<i64> =
                    s.in_flight.iter().filter(|(_, f)| f.queued.id == id).map(|(seq, _)| *seq).collect();
                seqs.iter().for_each(|seq| drop(s.in_flight.remove(seq)));
                !seqs.is_empty()
            });
            let queued = !in_flight && state.inboxes.get_mut(agent).is_some_and(|i| i.remove(id));
            (in_flight, queued)
        };
        if in_flight {
            self.settled(agent, 1);
        } else if queued {
            self.settled(agent, 0);
        }
    }

    /// The delivery lease of `seq` lapsed: TIMED_OUT, and a new attempt after the backoff while
    /// retries are left.
    fn lease_lapsed(self: &Arc<Self>, agent: &str, seq: i64) {
        let taken = {
            let mut state = self.lock();
            state.externals.agents.get_mut(agent).and_then(|s| s.in_flight.remove(&seq))
        };
        let Some(flight) = taken else { return };
        let plane = Arc::clone(self);
        let agent = agent.to_owned();
        tokio::spawn(async move {
            let Ok(Some(m)) = plane.store.get_message(&flight.queued.id).await else {
                plane.settled(&agent, 1);
                return;
            };
            let now = crate::now_ms();
            let mut t = MessageTransition::new(&[AckStage::Read], AckStage::TimedOut, now)
                .attempt(&flight.queued.attempt_id)
                .code(ErrorCode::AckTimeout)
                .note(format!("not released within the ack timeout ({} ms)", m.delivery.ack_timeout_ms));
            if m.timeouts < m.delivery.retry_attempts {
                let backoff = m.delivery.backoff_ms(m.timeouts + 1, 0.5);
                t.retry = Some((new_id(), now.saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX))));
            }
            match plane.store.transition_message(&m.id, t).await.map(|s| s.map(|s| m.clone().with_state(&s))) {
                Ok(Some(updated)) if updated.stage == AckStage::Received => {
                    if let Some(i) = plane.lock().inboxes.get_mut(&agent) {
                        i.in_flight = i.in_flight.saturating_sub(1);
                    }
                    plane.enqueue(&agent, &updated);
                }
                Ok(Some(updated)) => {
                    plane.settled(&agent, 1);
                    if updated.delivery.require_ack {
                        deliver::send_ack(&plane, &updated, updated.stage).await;
                    }
                }
                Ok(None) => plane.settled(&agent, 1),
                Err(e) => {
                    tracing::error!(message = %m.id, error = %e, "cannot time out a delivery; it is retried at the next start")
                }
            }
        });
    }
}

/// An open stream of one external agent's messages (see [`MessagePlane::stream`]).
pub struct Stream {
    plane: Arc<MessagePlane>,
    agent: String,
    stream: u64,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("agent", &self.agent).finish_non_exhaustive()
    }
}

impl Stream {
    /// The next message, waiting for one; `None` once the agent is deregistered.
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            let notified = self.notify.notified();
            if !self.plane.lock().externals.contains(&self.agent) {
                return None;
            }
            let popped = self.plane.lock().inboxes.get_mut(&self.agent).and_then(|i| {
                let q = i.pop();
                if q.is_some() {
                    i.in_flight += 1;
                }
                q
            });
            let Some(queued) = popped else {
                // Woken by a new message, or every second to notice a deregistration.
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                continue;
            };
            if let Some(item) = self.hand_out(queued).await {
                return Some(item);
            }
        }
    }

    /// Marks a queued message READ and in flight; `None` if it is no longer deliverable.
    async fn hand_out(&self, mut queued: Queued) -> Option<StreamItem> {
        let plane = &self.plane;
        let current = plane.store.get_message(&queued.id).await.ok().flatten();
        let Some(m) = current.filter(|m| m.envelope.message_id == queued.attempt_id && !m.stage.is_outcome()) else {
            plane.settled(&self.agent, 1);
            return None;
        };
        let seq = i64::try_from(plane.next_counter()).unwrap_or(i64::MAX);
        let now = crate::now_ms();
        let read = MessageTransition::new(&[AckStage::Received, AckStage::Read], AckStage::Read, now)
            .attempt(&queued.attempt_id);
        // Queued now, before any release of this seq can be: the writer keeps the order.
        drop(plane.store.transition_message(&m.id, read));
        // What a release needs to know (require_ack) without reading the message again.
        queued.record = Some(Arc::new(m.clone()));
        if let Some(s) = plane.lock().externals.agents.get_mut(&self.agent) {
            s.in_flight.insert(seq, InFlight { queued, stream: self.stream });
        }
        let lease = Duration::from_millis(m.delivery.ack_timeout_ms);
        let (timer_plane, agent) = (Arc::clone(plane), self.agent.clone());
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            timer_plane.lease_lapsed(&agent, seq);
        });
        let mut message = m;
        message.stage = AckStage::Read;
        Some(StreamItem { seq, message })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut state = self.plane.lock();
        let returned: Vec<Queued> = match state.externals.agents.get_mut(&self.agent) {
            Some(s) => {
                s.streams = s.streams.saturating_sub(1);
                let mine: Vec<i64> =
                    s.in_flight.iter().filter(|(_, f)| f.stream == self.stream).map(|(seq, _)| *seq).collect();
                mine.iter().filter_map(|seq| s.in_flight.remove(seq)).map(|f| f.queued).collect()
            }
            None => Vec::new(),
        };
        if let Some(inbox) = state.inboxes.get_mut(&self.agent) {
            for queued in returned.into_iter().rev() {
                inbox.in_flight = inbox.in_flight.saturating_sub(1);
                inbox.push_front(queued);
            }
        }
        state.externals.notify(&self.agent);
    }
}
