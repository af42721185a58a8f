//! The one task that sends on a session's socket.
//!
//! Everything the session says — answers from the frame loop, events from its job followers —
//! queues here (bounded: a full queue makes the senders wait, so a client that stops reading
//! stalls its own followers and nothing else). The writer stamps `session_id` and the
//! session's `event_seq` (1, 2, … over the envelopes ARCP counts), sends WebSocket pings, and
//! publishes what it sends to the host's traffic feed for `subscribe` (with its principal, so a
//! subscriber only ever sees its own principal's traffic).
//!
//! **Ack window** (`arcp.ack_window`, off at 0): once that many counted envelopes are
//! unacknowledged (`session.ack{last_processed_seq}`), further counted envelopes are held here
//! while control traffic (pongs, …) still flows; when the held ones reach the window too, the
//! client is not keeping up at all and the session is evicted with `BACKPRESSURE_OVERFLOW`.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use arcp_core::Envelope;
use arcp_core::ErrorCode;
use arcp_core::ids::SessionId;
use arcp_core::messages::{MessageType, SessionEvictedPayload};
use axum::extract::ws::{Message, WebSocket};
use futures::SinkExt as _;
use futures::stream::SplitSink;
use tokio::sync::{broadcast, mpsc, watch};

use super::ArcpConfig;

/// Envelopes queued for the writer; a full queue makes the senders wait.
pub const OUTBOUND_QUEUE: usize = 256;

/// Most envelopes written before one flush.
const FLUSH_BATCH: usize = 64;

/// One envelope a session sent, as `subscribe` sees it.
#[derive(Debug)]
pub struct Traffic {
    pub principal: String,
    pub session_id: String,
    pub job_id: Option<String>,
    pub type_name: &'static str,
    pub json: String,
}

pub struct Writer {
    pub sink: SplitSink<WebSocket, Message>,
    pub queued: mpsc::Receiver<Envelope>,
    /// The client's `last_processed_seq`.
    pub acked: watch::Receiver<u64>,
    pub session_id: SessionId,
    /// Set at the handshake.
    pub principal: Arc<OnceLock<String>>,
    pub traffic: broadcast::Sender<Arc<Traffic>>,
    pub config: ArcpConfig,
}

impl Writer {
    pub async fn run(mut self) {
        let window = self.config.ack_window;
        let mut event_seq = 0u64;
        let mut held: VecDeque<Envelope> = VecDeque::new();
        let mut ping = tokio::time::interval(self.config.ping_interval());
        ping.tick().await;
        loop {
            tokio::select! {
                next = self.queued.recv() => {
                    let Some(first) = next else { break };
                    // Whatever is queued already goes out in one flush (one write, not one per
                    // envelope), up to a batch.
                    let mut next = Some(first);
                    let mut batch = 0;
                    let mut alive = true;
                    while let Some(envelope) = next.take() {
                        let counted = envelope.payload.is_countable_event();
                        let acked = *self.acked.borrow();
                        if window > 0 && counted && (!held.is_empty() || event_seq.saturating_sub(acked) >= window) {
                            if held.len() as u64 >= window {
                                self.evict(event_seq, acked).await;
                                alive = false;
                                break;
                            }
                            held.push_back(envelope);
                        } else if !self.send(envelope, &mut event_seq).await {
                            alive = false;
                            break;
                        }
                        batch += 1;
                        if batch < FLUSH_BATCH {
                            next = self.queued.try_recv().ok();
                        }
                    }
                    if !alive || self.sink.flush().await.is_err() {
                        break;
                    }
                }
                changed = self.acked.changed(), if window > 0 => {
                    if changed.is_err() {
                        continue;
                    }
                    let acked = *self.acked.borrow();
                    let mut alive = true;
                    while alive && event_seq.saturating_sub(acked) < window {
                        let Some(envelope) = held.pop_front() else { break };
                        alive = self.send(envelope, &mut event_seq).await;
                    }
                    if !alive || self.sink.flush().await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if self.sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = self.sink.close().await;
    }

    async fn evict(&mut self, event_seq: u64, acked: u64) {
        let reason = format!(
            "{} events unacknowledged (last_processed_seq {acked} of {event_seq}) and as many more waiting: \
             send session.ack (arcp.ack_window = {})",
            event_seq.saturating_sub(acked),
            self.config.ack_window
        );
        let evicted = SessionEvictedPayload { code: ErrorCode::BackpressureOverflow, reason };
        let mut seq = event_seq;
        let _ = self.send(Envelope::new(MessageType::SessionEvicted(evicted)), &mut seq).await;
    }

    /// Numbers, encodes, queues (the caller flushes) and publishes one envelope; `false` once
    /// the socket is gone.
    async fn send(&mut self, mut envelope: Envelope, event_seq: &mut u64) -> bool {
        envelope.session_id = Some(self.session_id.clone());
        if envelope.payload.is_countable_event() {
            *event_seq += 1;
            envelope.event_seq = Some(*event_seq);
        }
        let text = match serde_json::to_string(&envelope) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an ARCP envelope");
                return true;
            }
        };
        let subscribers = self.traffic.receiver_count() > 0;
        let published = match (subscribers, self.principal.get(), &envelope.payload) {
            (true, Some(principal), payload) if !matches!(payload, MessageType::SubscribeEvent(_)) => Some(Traffic {
                principal: principal.clone(),
                session_id: self.session_id.as_str().to_owned(),
                job_id: envelope.job_id.as_ref().map(|j| j.as_str().to_owned()),
                type_name: envelope.payload.type_name(),
                json: text.clone(),
            }),
            _ => None,
        };
        if self.sink.feed(Message::Text(text.into())).await.is_err() {
            return false;
        }
        if let Some(traffic) = published {
            let _ = self.traffic.send(Arc::new(traffic));
        }
        true
    }
}
