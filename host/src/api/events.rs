//! `GET /v1/jobs/{id}/events`: a job's ordered event stream as Server-Sent Events.
//!
//! Events are read from the store (the source of truth), so a stream is *gapless* and
//! *resumable*: each SSE message carries `id: <seq>`, and a client that reconnects with
//! `Last-Event-ID: <seq>` (or `?after=<seq>`) gets exactly the events after it. New events
//! are pushed by the store's commit notifier; the stream ends after the job's terminal
//! `state` event. Keep-alive comments every 15 s keep proxies from closing idle streams.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Principal};
use crate::jobs::follow::EventFollower;
use crate::store::EventRecord;

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
    let job = state.manager.get(&principal.0, &id).await?;
    let follow = EventFollower::new(state.manager.store(), &job.id, after);
    let stream = futures::stream::unfold(follow, |mut f| async move {
        match f.next().await? {
            Ok(record) => Some((Ok(to_sse(&record)), f)),
            Err(e) => {
                tracing::warn!(error = %e, "event stream read failed; ending stream");
                None
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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
