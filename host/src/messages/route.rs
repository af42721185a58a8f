//! Accepting a message: validate, resolve its recipients, bound the inbox, deduplicate, commit
//! RECEIVED, then queue it for delivery. Everything a front door or a guest sends goes through
//! [`MessagePlane::send`].

use std::sync::Arc;
use std::time::Duration;

use super::envelope::{AckStage, DeliveryOptions, Envelope, ErrorCode, MessageType, Recipient, check_field};
use super::inbox::Queued;
use super::{MessagePlane, Waiter};
use crate::store::{Inserted, MessageRecord, MessageTransition, RecipientKind, StoreError};

/// Who sends: the principal whose ceiling bounds every delivery of the message, the envelope's
/// `producer_id`, and where ACK envelopes and replies for it can be delivered (a consumer
/// agent's name or an external agent's id), if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub principal: String,
    pub id: String,
    pub reply_to: Option<String>,
}

/// A message as a producer hands it over. Fields left `None` are filled in by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub recipient: Recipient,
    pub message_type: MessageType,
    pub content_type: String,
    pub payload: Vec<u8>,
    /// What the producer says the payload's length is; must agree with it.
    pub content_length: Option<u64>,
    /// The producer's id for this transmission (else a new one).
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub parent_correlation_id: Option<String>,
    pub idempotency_token: Option<String>,
    pub sequence_number: Option<u64>,
    pub hlc_timestamp: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub delivery: DeliveryOptions,
}

impl Outgoing {
    /// A message with every optional field left to the host.
    pub fn new(recipient: Recipient, message_type: MessageType, content_type: &str, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            recipient,
            message_type,
            content_type: content_type.to_owned(),
            payload,
            content_length: None,
            message_id: None,
            correlation_id: None,
            parent_correlation_id: None,
            idempotency_token: None,
            sequence_number: None,
            hlc_timestamp: None,
            timestamp_ms: None,
            delivery: DeliveryOptions::default(),
        }
    }
}

/// A send the plane took: the copies (one per recipient), each committed. `duplicate` is set
/// when they are copies accepted earlier with the same token: DUPLICATE_DETECTED if they have
/// an outcome, ALREADY_IN_PROGRESS if not.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub messages: Vec<MessageRecord>,
    pub duplicate: Option<ErrorCode>,
}

/// Why a send was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Refused by routing. `recorded` lists copies that were stored as REJECTED (BUFFER_FULL,
    /// AGENT_UNAVAILABLE); for NO_ROUTE, VALIDATION_ERROR and OVERSIZE_PAYLOAD nothing is stored.
    #[error("{code}: {reason}")]
    Refused { code: ErrorCode, reason: String, recorded: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refuse(code: ErrorCode, reason: impl Into<String>) -> SendError {
    SendError::Refused { code, reason: reason.into(), recorded: Vec::new() }
}

/// A new id for a message copy or an attempt: UUIDv7, so ids sort by creation time.
pub(super) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Where one copy goes.
struct Target {
    /// The inbox: a loaded agent's name or an external agent's id.
    inbox: String,
    /// What the envelope says (`name`, `name@version` or the external id).
    recipient: String,
    kind: RecipientKind,
}

impl MessagePlane {
    /// Accepts a message: resolves where it goes and commits one RECEIVED copy per recipient,
    /// or refuses it with a SW4RM error code. See the module docs of `messages` for the contract.
    /// An ACKNOWLEDGEMENT envelope that names a message is applied to it first (see `ack`).
    pub async fn send(self: &Arc<Self>, producer: &Producer, out: Outgoing) -> Result<Accepted, SendError> {
        if out.message_type == MessageType::Acknowledgement
            && let Some(ack) = super::ack::AckPayload::parse(&out.payload)
        {
            let ack = ack.map_err(|reason| refuse(ErrorCode::ValidationError, reason))?;
            return self.acknowledge(producer, out, ack).await;
        }
        self.route(producer, out).await
    }

    /// [`Self::send`] without the ACK interception: routes the message as it is.
    pub(super) async fn route(self: &Arc<Self>, producer: &Producer, out: Outgoing) -> Result<Accepted, SendError> {
        let now = crate::now_ms();
        self.validate(producer, &out)?;
        let delivery =
            out.delivery.resolve(&self.config().defaults).map_err(|e| refuse(ErrorCode::ValidationError, e))?;
        let targets = match self.waiting_requester(&out) {
            // A reply to a waiting `request` goes to the requester even if it consumes nothing.
            Some(name) => vec![Target { inbox: name.clone(), recipient: name, kind: RecipientKind::Agent }],
            None => self.resolve(&out.recipient)?,
        };
        let correlation_id = out.correlation_id.clone().unwrap_or_else(new_id);
        let expires_at =
            (delivery.ttl_ms > 0).then(|| now.saturating_add(i64::try_from(delivery.ttl_ms).unwrap_or(i64::MAX)));
        let topic = match &out.recipient {
            Recipient::Topic(t) => Some(t.clone()),
            Recipient::Agent(_) => None,
        };

        let mut records = Vec::with_capacity(targets.len());
        let mut reserved = Vec::new();
        {
            let mut state = self.lock();
            for (i, target) in targets.iter().enumerate() {
                let id = match (&out.message_id, i) {
                    (Some(given), 0) => given.clone(),
                    _ => new_id(),
                };
                let envelope = Envelope {
                    message_id: id.clone(),
                    idempotency_token: out.idempotency_token.clone().unwrap_or_default(),
                    producer_id: producer.id.clone(),
                    correlation_id: correlation_id.clone(),
                    parent_correlation_id: out.parent_correlation_id.clone().unwrap_or_default(),
                    sequence_number: out.sequence_number.unwrap_or(0),
                    retry_count: 0,
                    message_type: out.message_type,
                    content_type: out.content_type.clone(),
                    content_length: out.payload.len() as u64,
                    ttl_ms: delivery.ttl_ms,
                    hlc_timestamp: out.hlc_timestamp.clone().unwrap_or_default(),
                    timestamp_ms: out.timestamp_ms.unwrap_or(now),
                    recipient: target.recipient.clone(),
                    topic: topic.clone(),
                };
                let refusal = if target.kind == RecipientKind::External
                    && !state.externals.is_available(&target.inbox, now, self.config().heartbeat_timeout_ms)
                {
                    Some((
                        ErrorCode::AgentUnavailable,
                        format!(
                            "external agent '{}' is not available (no heartbeat or stream); its queued messages are kept",
                            target.inbox
                        ),
                    ))
                } else {
                    let inbox = state.inboxes.entry(target.inbox.clone()).or_default();
                    if inbox.pending >= self.config().inbox_capacity {
                        Some((
                            ErrorCode::BufferFull,
                            format!(
                                "the inbox of '{}' holds {} messages without an outcome (messages.inbox_capacity); retry later",
                                target.inbox, inbox.pending
                            ),
                        ))
                    } else {
                        inbox.pending += 1;
                        reserved.push(target.inbox.clone());
                        None
                    }
                };
                let (stage, code, note, finished_at) = match refusal {
                    Some((code, note)) => (AckStage::Rejected, Some(code), Some(note), Some(now)),
                    None => (AckStage::Received, None, None, None),
                };
                records.push(MessageRecord {
                    id,
                    principal: producer.principal.clone(),
                    kind: target.kind,
                    reply_to: producer.reply_to.clone(),
                    envelope,
                    payload: out.payload.clone(),
                    delivery,
                    stage,
                    error_code: code,
                    note,
                    timeouts: 0,
                    created_at: now,
                    updated_at: now,
                    not_before: None,
                    expires_at,
                    finished_at,
                });
            }
        }

        let window = i64::try_from(self.config().dedupe_window_ms).unwrap_or(i64::MAX);
        let inserted = match self.store.insert_messages(records, now.saturating_sub(window)).await {
            Ok(inserted) => inserted,
            Err(e) => {
                self.release_reservations(&reserved);
                return Err(e.into());
            }
        };

        let mut accepted = Vec::with_capacity(inserted.len());
        let mut duplicate = None;
        for (target, result) in targets.iter().zip(inserted) {
            match result {
                Inserted::Created(m) if m.stage == AckStage::Received => {
                    if !self.hand_to_waiter(&m) {
                        self.enqueue(&target.inbox, &m);
                    }
                    accepted.push(m);
                }
                Inserted::Created(m) => accepted.push(m),
                Inserted::Duplicate(existing) => {
                    self.release_reservations(std::slice::from_ref(&target.inbox));
                    let code = if existing.stage.is_outcome() && existing.finished_at.is_some() {
                        ErrorCode::DuplicateDetected
                    } else {
                        ErrorCode::AlreadyInProgress
                    };
                    duplicate = Some(code);
                    accepted.push(existing);
                }
            }
        }
        let refused: Vec<&MessageRecord> =
            accepted.iter().filter(|m| m.stage == AckStage::Rejected && duplicate.is_none()).collect();
        if !refused.is_empty() && refused.len() == accepted.len() {
            let first = refused
                .first()
                .map(|m| (m.error_code.unwrap_or(ErrorCode::InternalError), m.note.clone().unwrap_or_default()));
            let (code, reason) = first.unwrap_or((ErrorCode::InternalError, String::new()));
            return Err(SendError::Refused { code, reason, recorded: refused.iter().map(|m| m.id.clone()).collect() });
        }
        Ok(Accepted { messages: accepted, duplicate })
    }

    /// Sends and waits up to `timeout` for the reply: the first message routed back to
    /// `producer.reply_to` with this message's correlation id.
    pub async fn request(
        self: &Arc<Self>,
        producer: &Producer,
        mut out: Outgoing,
        timeout: Duration,
    ) -> Result<Option<MessageRecord>, SendError> {
        let Some(requester) = producer.reply_to.clone() else {
            return Err(refuse(ErrorCode::ValidationError, "a request needs a producer replies can be routed to"));
        };
        let correlation = new_id();
        out.correlation_id = Some(correlation.clone());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.lock().waiters.insert(correlation.clone(), Waiter { requester, reply });
        let sent = self.send(producer, out).await;
        let result = match sent {
            Ok(_) => Ok(tokio::time::timeout(timeout, answer).await.ok().and_then(Result::ok)),
            Err(e) => Err(e),
        };
        self.lock().waiters.remove(&correlation);
        result
    }

    /// The agent a message replies to, if it answers a `request` that is waiting.
    fn waiting_requester(&self, out: &Outgoing) -> Option<String> {
        let (Recipient::Agent(to), Some(correlation)) = (&out.recipient, &out.correlation_id) else { return None };
        let state = self.lock();
        let waiter = state.waiters.get(correlation)?;
        (waiter.requester == inbox_of(to)).then(|| waiter.requester.clone())
    }

    /// Checks what the producer controls before anything is resolved or stored.
    fn validate(&self, producer: &Producer, out: &Outgoing) -> Result<(), SendError> {
        let max = self.config().max_payload_bytes;
        if out.payload.len() > max {
            return Err(refuse(
                ErrorCode::OversizePayload,
                format!("the payload is {} bytes; at most {max} (messages.max_payload_bytes)", out.payload.len()),
            ));
        }
        if let Some(declared) = out.content_length
            && declared != out.payload.len() as u64
        {
            return Err(refuse(
                ErrorCode::ValidationError,
                format!("content_length {declared} disagrees with the payload's {} bytes", out.payload.len()),
            ));
        }
        let fields = [
            ("producer_id", Some(producer.id.as_str())),
            ("content_type", Some(out.content_type.as_str())),
            ("message_id", out.message_id.as_deref()),
            ("correlation_id", out.correlation_id.as_deref()),
            ("parent_correlation_id", out.parent_correlation_id.as_deref()),
            ("idempotency_token", out.idempotency_token.as_deref()),
            ("hlc_timestamp", out.hlc_timestamp.as_deref()),
            ("recipient", Some(out.recipient.as_target())),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                check_field(name, value).map_err(|e| refuse(ErrorCode::ValidationError, e))?;
            }
        }
        if producer.id.is_empty() {
            return Err(refuse(ErrorCode::ValidationError, "producer_id is empty"));
        }
        Ok(())
    }

    /// The copies a recipient stands for; NO_ROUTE when there are none.
    fn resolve(&self, recipient: &Recipient) -> Result<Vec<Target>, SendError> {
        match recipient {
            Recipient::Agent(reference) => {
                if self.lock().externals.contains(reference) {
                    let id = reference.clone();
                    return Ok(vec![Target { inbox: id.clone(), recipient: id, kind: RecipientKind::External }]);
                }
                match self.registry.resolve(reference) {
                    Ok(agent) if agent.consumer.is_some() => Ok(vec![Target {
                        inbox: agent.manifest.name.clone(),
                        recipient: reference.clone(),
                        kind: RecipientKind::Agent,
                    }]),
                    Ok(agent) => Err(refuse(
                        ErrorCode::NoRoute,
                        format!(
                            "agent '{}' does not consume messages (it exports no on-message handler)",
                            agent.reference()
                        ),
                    )),
                    Err(e) => Err(refuse(ErrorCode::NoRoute, format!("no agent or external agent '{reference}': {e}"))),
                }
            }
            Recipient::Topic(topic) => {
                let mut targets: Vec<Target> = self
                    .registry
                    .subscribers(topic)
                    .into_iter()
                    .map(|name| Target { inbox: name.clone(), recipient: name, kind: RecipientKind::Agent })
                    .collect();
                for id in self.lock().externals.subscribers(topic) {
                    targets.push(Target { inbox: id.clone(), recipient: id, kind: RecipientKind::External });
                }
                if targets.is_empty() {
                    return Err(refuse(ErrorCode::NoRoute, format!("topic '{topic}' has no subscribers")));
                }
                Ok(targets)
            }
        }
    }

    fn release_reservations(&self, inboxes: &[String]) {
        let mut state = self.lock();
        for name in inboxes {
            if let Some(inbox) = state.inboxes.get_mut(name) {
                inbox.pending = inbox.pending.saturating_sub(1);
            }
        }
    }

    /// A reply to a waiting `request`: handed over in memory and recorded as FULFILLED.
    fn hand_to_waiter(self: &Arc<Self>, m: &MessageRecord) -> bool {
        let waiter = {
            let mut state = self.lock();
            match state.waiters.get(&m.envelope.correlation_id) {
                Some(w) if w.requester == inbox_of(&m.envelope.recipient) => {
                    state.waiters.remove(&m.envelope.correlation_id)
                }
                _ => None,
            }
        };
        let Some(waiter) = waiter else { return false };
        let inbox = inbox_of(&m.envelope.recipient).to_owned();
        let delivered = waiter.reply.send(m.clone()).is_ok();
        let plane = Arc::clone(self);
        let (id, attempt) = (m.id.clone(), m.envelope.message_id.clone());
        tokio::spawn(async move {
            let now = crate::now_ms();
            let read = MessageTransition::new(&[AckStage::Received], AckStage::Read, now)
                .attempt(&attempt)
                .note("handed to the waiting request");
            let end = if delivered {
                MessageTransition::new(&[AckStage::Read], AckStage::Fulfilled, now).attempt(&attempt)
            } else {
                MessageTransition::new(&[AckStage::Read], AckStage::Failed, now)
                    .attempt(&attempt)
                    .code(ErrorCode::AckTimeout)
                    .note("the request stopped waiting")
            };
            let first = plane.store.transition_message(&id, read);
            let second = plane.store.transition_message(&id, end);
            if let (Err(e), _) | (_, Err(e)) = (first.await, second.await) {
                tracing::warn!(message = %id, error = %e, "cannot record the reply's stages");
            }
            plane.settled(&inbox, 0);
        });
        true
    }

    /// Queues a committed RECEIVED copy: at once, or when its retry backoff ends; and arms its
    /// TTL.
    pub(super) fn enqueue(self: &Arc<Self>, inbox: &str, m: &MessageRecord) {
        if let Some(at) = m.expires_at {
            self.arm_ttl(inbox, &m.id, at);
        }
        // Small messages travel with their queue entry (memory stays bounded by the inbox
        // capacity times this size); larger ones are read back at delivery.
        let record = (m.payload.len() <= KEEP_IN_QUEUE_BYTES).then(|| Arc::new(m.clone()));
        let queued =
            Queued { id: m.id.clone(), attempt_id: m.envelope.message_id.clone(), class: m.delivery.class, record };
        let wait = m.not_before.map_or(0, |t| t.saturating_sub(crate::now_ms()));
        if wait > 0 {
            let plane = Arc::clone(self);
            let inbox = inbox.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
                plane.push(&inbox, queued, m_kind_external(&plane, &inbox));
            });
            return;
        }
        self.push(inbox, queued, m.kind == RecipientKind::External);
    }

    fn push(self: &Arc<Self>, inbox: &str, queued: Queued, external: bool) {
        {
            let mut state = self.lock();
            state.inboxes.entry(inbox.to_owned()).or_default().push(queued);
        }
        if external {
            self.lock().externals.notify(inbox);
        } else {
            self.pump(inbox);
        }
    }

    /// A copy reached an outcome (or was handed on): `finished` more of `inbox`'s pending
    /// messages are done and one delivery slot (if `slot`) is free again.
    pub(super) fn settled(self: &Arc<Self>, inbox: &str, in_flight_done: usize) {
        let external = {
            let mut state = self.lock();
            if let Some(i) = state.inboxes.get_mut(inbox) {
                i.pending = i.pending.saturating_sub(1);
                i.in_flight = i.in_flight.saturating_sub(in_flight_done);
            }
            state.externals.contains(inbox)
        };
        if !external {
            self.pump(inbox);
        }
    }

    /// A message whose TTL passes while it has no outcome FAILS with TTL_EXPIRED.
    fn arm_ttl(self: &Arc<Self>, inbox: &str, id: &str, at: i64) {
        let plane = Arc::clone(self);
        let (inbox, id) = (inbox.to_owned(), id.to_owned());
        tokio::spawn(async move {
            let wait = at.saturating_sub(crate::now_ms());
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
            let expire =
                MessageTransition::new(&[AckStage::Received, AckStage::Read], AckStage::Failed, crate::now_ms())
                    .code(ErrorCode::TtlExpired)
                    .note("the message's ttl_ms passed before it had an outcome");
            match plane.store.transition_message(&id, expire).await {
                Ok(Some(_)) => {
                    // Still queued: take it out. In delivery: the delivery's outcome no longer
                    // applies (the attempt is closed) and it settles its own slot.
                    let was_queued = plane.lock().inboxes.get_mut(&inbox).is_some_and(|i| i.remove(&id));
                    if was_queued {
                        plane.settled(&inbox, 0);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(message = %id, error = %e, "cannot expire the message"),
            }
        });
    }

    /// Puts a message found without an outcome at start back in its inbox: RECEIVED as is,
    /// READ (its delivery was cut short by the restart) as a new attempt.
    pub(super) async fn requeue_after_restart(self: &Arc<Self>, m: MessageRecord) {
        let inbox = inbox_of(&m.envelope.recipient).to_owned();
        self.lock().inboxes.entry(inbox.clone()).or_default().pending += 1;
        let m = if m.stage == AckStage::Read {
            let now = crate::now_ms();
            let mut t = MessageTransition::new(&[AckStage::Read], AckStage::Received, now)
                .attempt(&m.envelope.message_id)
                .note("the host restarted during the delivery; delivering it again");
            t.retry = Some((new_id(), now));
            match self.store.transition_message(&m.id, t).await {
                Ok(Some(updated)) => m.with_state(&updated),
                Ok(None) => m,
                Err(e) => {
                    tracing::error!(message = %m.id, error = %e, "cannot start a new attempt after restart; it is retried at the next start");
                    return;
                }
            }
        } else {
            m
        };
        self.enqueue(&inbox, &m);
    }
}

/// Largest payload kept in memory with a queued message.
const KEEP_IN_QUEUE_BYTES: usize = 16 * 1024;

/// The inbox a recipient string belongs to: `name@version` → `name`.
pub(super) fn inbox_of(recipient: &str) -> &str {
    recipient.split_once('@').map_or(recipient, |(name, _)| name)
}

fn m_kind_external(plane: &MessagePlane, inbox: &str) -> bool {
    plane.lock().externals.contains(inbox)
}
