//! The message plane: routed SW4RM envelopes between agents, with staged ACKs, at-least-once
//! delivery, deduplication, bounded inboxes and a registry of external agents.
//!
//! It is a core module like `jobs/`, and the front doors (HTTP today, SW4RM gRPC next) are
//! codecs over [`MessagePlane`]: they translate their wire into [`Outgoing`], [`Producer`] and
//! the release/stream calls of `external`, and the core's results back.
//!
//! The contract (also `docs/messaging.md`):
//! - **Accepted = committed.** [`MessagePlane::send`] returns only after the message (one row
//!   per recipient copy) is committed in stage RECEIVED. From then on it reaches an outcome —
//!   FULFILLED, REJECTED, FAILED, or TIMED_OUT once its retries are used up — across crashes.
//! - **Explicit recipients.** An agent reference, an external agent id, or a topic (one copy
//!   per subscriber). No resolvable recipient is NO_ROUTE; nothing is broadcast.
//! - **At-least-once.** A delivery that ends without an outcome (the consumer ran past its ack
//!   timeout, an external agent did not release it in time, the host restarted) is delivered
//!   again as a new attempt: new `message_id`, same token, `retry_count + 1`, after an
//!   exponential backoff with jitter. Timeouts count against `retry_attempts`; restarts do not.
//! - **Exactly-once kv effects for Wasm consumers.** A delivery's kv writes are held and
//!   committed in the same transaction as its outcome, and only if that attempt is still the
//!   current one: a redelivered message never applies its kv writes twice.
//! - **Dedupe.** By `(principal, producer_id, idempotency_token)` within the dedupe window,
//!   else by `(principal, producer_id, sequence_number)` when the producer numbers messages: a
//!   duplicate of a finished message returns its recorded outcome (DUPLICATE_DETECTED), of one
//!   in flight ALREADY_IN_PROGRESS; nothing new is enqueued.
//! - **Authority.** A delivery runs under the consumer's declared scopes ∩ the policy ceiling of
//!   the principal that produced the message: a message never carries more authority than its
//!   sender has.
//!
//! Rooms: [`envelope`] (vocabulary), [`idempotency`] (tokens), [`inbox`] (lanes and bounds),
//! `route` (accepting and routing), `deliver` (Wasm consumers, through the job runner),
//! `external` (registered external agents, their streams and releases).

pub mod ack;
pub mod envelope;
pub mod external;
pub mod idempotency;
pub mod inbox;

mod deliver;
mod route;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::config::Policy;
use crate::engine::registry::Registry;
use crate::jobs::JobManager;
use crate::store::{MessageRecord, Store, StoreError};
pub use envelope::{
    AckStage, CommClass, Defaults, Delivery, DeliveryOptions, Envelope, ErrorCode, MessageType, Recipient,
};
pub use external::{ExternalAgent, Release, StreamItem};
pub use route::{Accepted, Outgoing, Producer, SendError};

/// The `[messages]` table of the policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// Messages without an outcome one recipient may have; beyond, sends are BUFFER_FULL.
    /// SW4RM's reference router uses 10, too few for a burst of real traffic; 1,000 per agent
    /// keeps a burst of a second or two at the measured delivery rates while bounding how far
    /// one recipient can fall behind (the payloads wait in SQLite, not in memory).
    pub inbox_capacity: usize,
    /// Largest payload accepted; larger is OVERSIZE_PAYLOAD.
    pub max_payload_bytes: usize,
    /// How long an idempotency token (or sequence number) is remembered.
    pub dedupe_window_ms: u64,
    /// Finished messages and their stage history are deleted this long after they finished.
    pub retention_ms: u64,
    /// Deliveries to one Wasm consumer that run at once.
    pub deliveries_per_agent: usize,
    /// An external agent with no heartbeat (and no open stream) for this long is unavailable.
    pub heartbeat_timeout_ms: u64,
    /// Defaults and bounds of per-message delivery options.
    pub defaults: Defaults,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            inbox_capacity: 1_000,
            max_payload_bytes: 256 * 1024,
            dedupe_window_ms: 3_600_000,
            retention_ms: 24 * 3_600_000,
            deliveries_per_agent: 32,
            heartbeat_timeout_ms: 30_000,
            defaults: Defaults::default(),
        }
    }
}

/// A `request` waiting for its reply: the requesting agent and where to hand the reply.
struct Waiter {
    requester: String,
    reply: oneshot::Sender<MessageRecord>,
}

/// The in-memory side of the plane. The store is the truth; this is rebuilt from it at start.
#[derive(Default)]
struct PlaneState {
    inboxes: HashMap<String, inbox::Inbox>,
    waiters: HashMap<String, Waiter>,
    externals: external::Externals,
}

/// Routes, delivers and tracks messages. One per host, owned by the [`JobManager`].
pub struct MessagePlane {
    store: Store,
    registry: Arc<Registry>,
    policy: Arc<Policy>,
    manager: Weak<JobManager>,
    state: Mutex<PlaneState>,
    /// Source of sequence numbers for Wasm producers and of stream seqs: microseconds at
    /// start, then +1, so they keep increasing across restarts.
    counter: AtomicU64,
}

impl std::fmt::Debug for MessagePlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagePlane").finish_non_exhaustive()
    }
}

impl MessagePlane {
    pub fn new(store: Store, registry: Arc<Registry>, policy: Arc<Policy>, manager: Weak<JobManager>) -> Self {
        let start = u64::try_from(crate::now_ms()).unwrap_or(0).saturating_mul(1_000);
        MessagePlane {
            store,
            registry,
            policy,
            manager,
            state: Mutex::new(PlaneState::default()),
            counter: AtomicU64::new(start),
        }
    }

    fn config(&self) -> &MessagesConfig {
        &self.policy.messages
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlaneState> {
        // Every change under the lock is a handful of map/queue operations that leave the
        // state consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next value of the plane's monotonic counter.
    fn next_counter(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A sequence number for a Wasm producer's message: increasing, also across restarts.
    pub fn next_sequence(&self) -> u64 {
        self.next_counter()
    }

    /// A message as the principal may see it: it produced it, or it owns the external agent
    /// the message was routed to.
    pub async fn get(&self, principal: &str, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let Some(message) = self.store.get_message(id).await? else { return Ok(None) };
        Ok(self.visible_to(principal, &message).then_some(message))
    }

    /// Whether `principal` may see `message`.
    pub fn visible_to(&self, principal: &str, message: &MessageRecord) -> bool {
        message.principal == principal
            || (message.kind == crate::store::RecipientKind::External
                && self.lock().externals.owner(&message.envelope.recipient) == Some(principal))
    }

    /// External agents `principal` registered (their inboxes are visible to it).
    pub fn externals_of(&self, principal: &str) -> Vec<String> {
        self.lock().externals.owned_by(principal)
    }

    /// Re-queues every message without an outcome (after a restart) and loads external agents.
    /// Call once, after the agents are loaded. (Finished messages are pruned by `retention`.)
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StoreError> {
        for agent in self.store.external_agents().await? {
            self.lock().externals.restore(agent);
        }
        let pending = self.store.pending_messages().await?;
        let count = pending.len();
        for message in pending {
            self.requeue_after_restart(message).await;
        }
        if count > 0 {
            tracing::info!(count, "messages without an outcome queued for delivery again");
        }
        Ok(count)
    }
}
