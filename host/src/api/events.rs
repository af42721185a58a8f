//! `GET /v1/jobs/{id}/events`: a job's ordered event stream as Server-Sent Events.
//!
//! Events are read from the store (the source of truth), so a stream is *gapless* and
//! *resumable*: each SSE message carries `id: <seq>`, and a client that reconnects with
//! `Last-Event-ID: <seq>` (or `?after=<seq>`) gets exactly the events after it. New events
//! are pushed by the store's commit notifier; the stream ends after the job's terminal
//! `state` event. Keep-alive comments every 15 s keep proxies from closing idle streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Principal};
use crate::jobs::JobError;
use crate::store::{EventRecord, JobStatus, Store};

/// Events read per store query: with chunks of up to 256 KiB, this bounds a stream's buffer.
const PAGE: u32 = 32;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger seq (same as the `Last-Event-ID` header).
    pub after: Option<u64>,
}

/// Follow a job's events.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "job_events", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of {seq, kind, at, data}"), (status = 404, body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_header", "Last-Event-ID must be an event seq number"))?,
        None => query.after.unwrap_or(0),
    };
    // Subscribe before the first read so no commit can slip between them.
    let notifications = state.manager.store().subscribe();
    let job = state.manager.get(&principal.0, &id).await?;
    let follow = Follow {
        store: state.manager.store().clone(),
        job_id: job.id,
        after,
        pending: VecDeque::new(),
        notifications,
        finished: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Follow {
    store: Store,
    job_id: String,
    after: u64,
    pending: VecDeque<EventRecord>,
    notifications: broadcast::Receiver<String>,
    finished: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                self.after = record.seq;
                if is_terminal_state(&record) {
                    self.finished = true;
                }
                return Some(to_sse(&record));
            }
            if self.finished {
                return None;
            }
            match self.store.events_after(&self.job_id, self.after, PAGE).await {
                Ok(batch) if !batch.is_empty() => {
                    self.pending.extend(batch);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %self.job_id, error = %JobError::from(e), "event stream read failed; ending stream");
                    return None;
                }
            }
            self.wait_for_commit().await;
        }
    }

    /// Sleeps until the store commits an event of this job (or a safety re-check is due).
    async fn wait_for_commit(&mut self) {
        let wait = async {
            loop {
                match self.notifications.recv().await {
                    Ok(id) if id == self.job_id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
}

fn is_terminal_state(record: &EventRecord) -> bool {
    record.kind == "state"
        && record
            .data
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(JobStatus::parse)
            .is_some_and(JobStatus::is_terminal)
}

fn to_sse(record: &EventRecord) -> Event {
    let body = serde_json::json!({
        "seq": record.seq,
        "kind": record.kind,
        "at": crate::rfc3339(record.at),
        "data": record.data,
    });
    Event::default().id(record.seq.to_string()).event(record.kind.clone()).data(body.to_string())
}
