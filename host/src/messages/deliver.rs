//! Delivering one message to a Wasm consumer: a run of the job runner's sandbox with the
//! consumer's `on-message` export, under the lease `consumer's declared scopes ∩ the producer
//! principal's ceiling`, bounded by the message's ack timeout.
//!
//! The delivery's READ stage, its audit rows and its kv writes are held and committed with its
//! outcome in one transaction — conditional on the attempt still being the current one — so a
//! fast delivery costs one commit, and a redelivered message never applies its kv writes twice.
//! An effect that leaves the delivery (a fetch, a send, a delegation) writes READ and the audit
//! rows first.

use std::sync::Arc;

use super::envelope::{AckStage, ErrorCode, MessageType};
use super::inbox::Queued;
use super::route::{inbox_of, new_id};
use super::{MessagePlane, Outgoing, Producer, Recipient};
use crate::jobs::JobManager;
use crate::jobs::runner::{self, DeliveryOutcome};
use crate::lease::{Lease, LeaseRequest};
use crate::store::{FinishDelivery, MessageRecord, MessageState, MessageTransition};

impl MessagePlane {
    /// Starts deliveries from a Wasm consumer's inbox while it has free delivery slots
    /// (`messages.deliveries_per_agent`).
    pub(super) fn pump(self: &Arc<Self>, inbox: &str) {
        let Some(manager) = self.manager.upgrade() else { return };
        if manager.is_shutting_down() {
            return; // what is queued stays RECEIVED in the store and is delivered at the next start
        }
        let limit = self.config().deliveries_per_agent.max(1);
        let mut started = Vec::new();
        {
            let mut state = self.lock();
            let Some(i) = state.inboxes.get_mut(inbox) else { return };
            while i.in_flight < limit {
                let Some(queued) = i.pop() else { break };
                i.in_flight += 1;
                started.push(queued);
            }
        }
        for queued in started {
            tokio::spawn(run(Arc::clone(&manager), inbox.to_owned(), queued));
        }
    }
}

/// A delivery slot of an inbox, freed exactly once: before the delivery waits for its
/// outcome's commit (so the next delivery need not wait for this one's fsync), or on drop.
struct Slot {
    plane: Arc<MessagePlane>,
    inbox: String,
    held: bool,
}

impl Slot {
    fn free(&mut self) {
        if std::mem::take(&mut self.held) {
            if let Some(i) = self.plane.lock().inboxes.get_mut(&self.inbox) {
                i.in_flight = i.in_flight.saturating_sub(1);
            }
            self.plane.pump(&self.inbox);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

/// Runs the delivery of `queued` from `inbox` and settles the inbox afterwards.
pub(super) async fn run(manager: Arc<JobManager>, inbox: String, queued: Queued) {
    let plane = Arc::clone(manager.messages());
    let mut slot = Slot { plane: Arc::clone(&plane), inbox: inbox.clone(), held: true };
    match deliver(&manager, &plane, &queued, &mut slot).await {
        Ok(Some(retry)) => {
            // Back in the inbox after its backoff; still pending.
            drop(slot);
            plane.enqueue(&inbox, &retry);
        }
        Ok(None) => {
            drop(slot);
            plane.settled(&inbox, 0);
        }
        Err(e) => {
            // The outcome could not be written: the message stays as it is in the store and
            // is delivered again after a restart. Keep it counted as pending.
            tracing::error!(message = %queued.id, error = %e, "cannot record a delivery; it is delivered again at the next start");
        }
    }
}

/// Delivers once. `Ok(Some(m))`: a new attempt of `m` is due (after its backoff);
/// `Ok(None)`: the message has its outcome (or is no longer this delivery's to give).
async fn deliver(
    manager: &Arc<JobManager>,
    plane: &Arc<MessagePlane>,
    queued: &Queued,
    slot: &mut Slot,
) -> Result<Option<MessageRecord>, crate::store::StoreError> {
    let store = manager.store();
    // A message that came with its queue entry is not read back: every write below is
    // conditional on this attempt, so a stale copy can only find its outcome refused.
    let m = match &queued.record {
        Some(record) => MessageRecord::clone(record),
        None => match store.get_message(&queued.id).await? {
            Some(m) => m,
            None => return Ok(None),
        },
    };
    if m.stage != AckStage::Received || m.envelope.message_id != queued.attempt_id {
        return Ok(None);
    }
    let now = crate::now_ms();
    let end = |to: AckStage, code: ErrorCode, note: String| {
        MessageTransition::new(&[AckStage::Received, AckStage::Read], to, now)
            .attempt(&m.envelope.message_id)
            .code(code)
            .note(note)
    };
    if m.expires_at.is_some_and(|at| at <= now) {
        let t =
            end(AckStage::Failed, ErrorCode::TtlExpired, "the message's ttl_ms passed before it was delivered".into());
        finish(plane, &m, store.transition_message(&m.id, t).await?).await;
        return Ok(None);
    }
    let agent = match manager.registry().resolve(&m.envelope.recipient) {
        Ok(agent) if agent.consumer.is_some() => agent,
        Ok(_) | Err(_) => {
            let note = format!("agent '{}' is not loaded as a consumer any more", m.envelope.recipient);
            finish(
                plane,
                &m,
                store.transition_message(&m.id, end(AckStage::Rejected, ErrorCode::NoRoute, note)).await?,
            )
            .await;
            return Ok(None);
        }
    };
    // The producer's principal bounds what the delivery may do: its policy ceiling, now.
    let ceiling = manager.policy().ceiling_for(&m.principal, Some(&agent.manifest.name));
    let lease = match Lease::effective(
        &agent.declared,
        &ceiling,
        &LeaseRequest::default(),
        None,
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(mut lease) => {
            lease.limits.deadline_ms = lease.limits.deadline_ms.min(m.delivery.ack_timeout_ms);
            lease
        }
        Err(e) => {
            let t = end(AckStage::Failed, ErrorCode::InternalError, format!("no lease for the delivery: {e}"));
            finish(plane, &m, store.transition_message(&m.id, t).await?).await;
            return Ok(None);
        }
    };

    let run = runner::run_delivery(manager, &agent, lease, &m).await;
    let (outcome, held) = (run.outcome, run.held);
    let finished_at = crate::now_ms();
    let t = |to: AckStage| {
        MessageTransition::new(&[AckStage::Received, AckStage::Read], to, finished_at).attempt(&m.envelope.message_id)
    };
    let (transition, commit_kv) = match outcome {
        DeliveryOutcome::Fulfilled => (t(AckStage::Fulfilled), true),
        DeliveryOutcome::Rejected(code, note) => (t(AckStage::Rejected).code(code).note(note), false),
        DeliveryOutcome::Failed(note) => (t(AckStage::Failed).code(ErrorCode::InternalError).note(note), false),
        DeliveryOutcome::TimedOut => {
            let note = format!("no outcome within the ack timeout ({} ms)", m.delivery.ack_timeout_ms);
            let mut timed_out = t(AckStage::TimedOut).code(ErrorCode::AckTimeout).note(note);
            if m.timeouts < m.delivery.retry_attempts {
                let backoff = m.delivery.backoff_ms(m.timeouts + 1, jitter());
                timed_out.retry =
                    Some((new_id(), finished_at.saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX))));
            }
            (timed_out, false)
        }
        DeliveryOutcome::Interrupted => {
            // The host is stopping: leave the message as it is; it is delivered again at start.
            tracing::debug!(message = %m.id, "delivery interrupted by shutdown");
            return Err(crate::store::StoreError::Closed);
        }
    };
    let retrying = transition.retry.is_some();
    let op = FinishDelivery {
        id: m.id.clone(),
        read_at: held.read_pending.then_some(held.read_at),
        audit: held.audit,
        kv: if commit_kv { held.kv } else { crate::store::HeldKv::default() },
        transition,
    };
    let commit = store.finish_delivery(op);
    slot.free();
    let updated = commit.await?;
    if retrying {
        return Ok(updated.map(|s| m.with_state(&s)));
    }
    finish(plane, &m, updated).await;
    Ok(None)
}

/// After an outcome committed: the ACKNOWLEDGEMENT envelope the producer asked for.
async fn finish(plane: &Arc<MessagePlane>, original: &MessageRecord, updated: Option<MessageState>) {
    let Some(state) = updated else { return };
    if original.delivery.require_ack {
        let done = original.clone().with_state(&state);
        send_ack(plane, &done, done.stage).await;
    }
}

/// Sends an ACKNOWLEDGEMENT envelope for `m` at `stage` to its producer's `reply_to`, if it has
/// one: from the recipient, JSON `{"ack_for_message_id", "ack_stage", "error_code", "note"}`
/// as SW4RM's SDK builds it. Best effort: the stage history is the record.
pub(super) async fn send_ack(plane: &Arc<MessagePlane>, m: &MessageRecord, stage: AckStage) {
    let Some(reply_to) = m.reply_to.clone() else { return };
    if m.envelope.message_type == MessageType::Acknowledgement {
        return; // never acknowledge an acknowledgement
    }
    let payload = serde_json::json!({
        "ack_for_message_id": m.envelope.message_id,
        "ack_stage": stage.as_str(),
        "error_code": m.error_code.map(|c| c.as_str()),
        "note": m.note,
        "message": m.id,
    });
    let mut out = Outgoing::new(
        Recipient::Agent(reply_to),
        MessageType::Acknowledgement,
        "application/json",
        payload.to_string().into_bytes(),
    );
    out.correlation_id = Some(m.envelope.correlation_id.clone());
    let producer =
        Producer { principal: m.principal.clone(), id: inbox_of(&m.envelope.recipient).to_owned(), reply_to: None };
    if let Err(e) = plane.route(&producer, out).await {
        tracing::debug!(message = %m.id, error = %e, "acknowledgement not delivered to the producer");
    }
}

/// A number in [0, 1) for backoff jitter (no need for a cryptographic source).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
