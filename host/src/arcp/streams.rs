//! Reading jobs beyond the ones a session started: `session.list_jobs`, `job.subscribe`,
//! `subscribe` (the traffic feed) and `resume`.
//!
//! Everything is scoped to the session's principal. `job.subscribe` on another principal's job
//! is `PERMISSION_DENIED` (ARCP asks for it; HTTP answers such a job with 404). `subscribe`
//! reads the host's feed of what sessions *sent* (never what clients sent, so never a
//! `session.open` or its token), filtered to the subscriber's principal before anything else.
//!
//! `resume{after_message_id}`: job events carry stable ids (`msg_<job>.<seq>.<k>`, the same in
//! every session), so the id names a job and a point in its events. The host finds the session
//! that followed that job (the `followed_jobs` table — it survives restarts), and this session
//! follows all of that session's jobs again: the named job from just after the named envelope,
//! the others from their first event (a client drops the ids it already has). Every envelope is
//! correlated to the request it answered in the old session.

use std::sync::Arc;

use arcp_core::Envelope;
use arcp_core::ErrorCode;
use arcp_core::Priority;
use arcp_core::ids::{MessageId, SubscriptionId};
use arcp_core::messages::{
    AckPayload, JobListEntry, JobSubscribePayload, JobSubscribedPayload, MessageType, ResumePayload,
    SessionJobsPayload, SessionListJobsPayload, SubscribeAcceptedPayload, SubscribeClosedPayload,
    SubscribeEventPayload, SubscribePayload, SubscriptionFilter,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::invoke::{Followed, Resume, SessionContext, follow, parse_event_message_id};
use super::wire::{corral_job_id, job_id, nack, reply};
use super::writer::Traffic;
use crate::store::{JobFilter, JobRecord, JobStatus};

/// `session.list_jobs`: the principal's jobs (from every session and front door), newest first,
/// paged with `next_cursor`.
pub async fn list_jobs(ctx: &SessionContext, id: &MessageId, request: SessionListJobsPayload) -> Envelope {
    let filter = request.filter.unwrap_or_default();
    let mut statuses = Vec::new();
    for name in &filter.status {
        match JobStatus::parse(name) {
            Some(status) => statuses.push(status),
            None => {
                let message =
                    format!("unknown status '{name}' (queued, running, completed, failed, cancelled, timed_out)");
                return nack(ErrorCode::InvalidArgument, message, Some(id));
            }
        }
    }
    let query = JobFilter {
        principal: ctx.principal.clone(),
        statuses,
        agent: filter.agent.filter(|a| !a.is_empty()),
        created_after: filter.created_after.map(|t| t.timestamp_millis()),
        created_before: filter.created_before.map(|t| t.timestamp_millis()),
        limit: request.limit.unwrap_or(50),
        cursor: request.cursor.filter(|c| !c.is_empty()),
    };
    let store = ctx.manager.store();
    let (jobs, next_cursor) = match store.list_jobs(query).await {
        Ok(page) => page,
        Err(e) => return nack(ErrorCode::Unavailable, e.to_string(), Some(id)),
    };
    let seqs = match store.last_event_seqs(jobs.iter().map(|j| j.id.clone()).collect()).await {
        Ok(seqs) => seqs,
        Err(e) => return nack(ErrorCode::Unavailable, e.to_string(), Some(id)),
    };
    let mut entries = Vec::with_capacity(jobs.len());
    for job in jobs {
        let last_event_seq = seqs.get(&job.id).copied().unwrap_or(0);
        entries.push(JobListEntry {
            job_id: job_id(&job.id),
            agent: format!("{}@{}", job.agent_name, job.agent_version),
            status: job.status.as_str().to_owned(),
            parent_job_id: job.parent_id.as_deref().map(job_id),
            created_at: chrono::DateTime::from_timestamp_millis(job.created_at).unwrap_or_default(),
            trace_id: None,
            last_event_seq,
        });
    }
    let page = SessionJobsPayload { request_id: id.as_str().to_owned(), jobs: entries, next_cursor };
    reply(MessageType::SessionJobs(page), Some(id))
}

/// The principal's job named by an ARCP job id, or the `nack` that says why not.
async fn own_job(ctx: &SessionContext, arcp_id: &str, id: &MessageId) -> Result<JobRecord, Envelope> {
    let not_found = || nack(ErrorCode::NotFound, format!("no job {arcp_id}"), Some(id));
    let corral = corral_job_id(arcp_id).ok_or_else(not_found)?;
    match ctx.manager.store().get_job(corral).await {
        Ok(Some(job)) if job.principal == ctx.principal => Ok(job),
        Ok(Some(_)) => {
            Err(nack(ErrorCode::PermissionDenied, format!("job {arcp_id} belongs to another principal"), Some(id)))
        }
        Ok(None) => Err(not_found()),
        Err(e) => Err(nack(ErrorCode::Unavailable, e.to_string(), Some(id))),
    }
}

/// `job.subscribe`: `job.subscribed`, then the job's events — from `from_event_seq` (inclusive)
/// with `history`, else from now — correlated to this request.
pub async fn job_subscribe(
    ctx: &SessionContext,
    id: &MessageId,
    request: JobSubscribePayload,
) -> Result<Followed, Envelope> {
    let job = own_job(ctx, request.job_id.as_str(), id).await?;
    let after = if request.history {
        request.from_event_seq.unwrap_or(1).saturating_sub(1)
    } else {
        ctx.manager
            .store()
            .last_event_seq(&job.id)
            .await
            .map_err(|e| nack(ErrorCode::Unavailable, e.to_string(), Some(id)))?
    };
    let subscribed = JobSubscribedPayload {
        job_id: job_id(&job.id),
        current_status: job.status.as_str().to_owned(),
        agent: format!("{}@{}", job.agent_name, job.agent_version),
        parent_job_id: job.parent_id.as_deref().map(job_id),
        trace_id: None,
        subscribed_from: after + 1,
        replayed: request.history,
    };
    let mut envelope = reply(MessageType::JobSubscribed(subscribed), Some(id));
    envelope.job_id = Some(job_id(&job.id));
    let _ = ctx.outbound.send(envelope).await;
    Ok(follow(ctx, &job, id.clone(), Resume::From(after)))
}

/// `subscribe`: `subscribe.accepted`, then every envelope the principal's sessions send that
/// matches the filter, as `subscribe.event`. Live only: `since` is refused.
pub async fn subscribe(
    ctx: &SessionContext,
    traffic: &broadcast::Sender<Arc<Traffic>>,
    id: &MessageId,
    request: SubscribePayload,
) -> Result<(SubscriptionId, JoinHandle<()>), Envelope> {
    if request.since.is_some_and(|s| s.after_message_id.is_some()) {
        let message = "subscribe `since` (backfill) is not supported; use job.subscribe with history, or resume";
        return Err(nack(ErrorCode::Unimplemented, message, Some(id)));
    }
    let subscription = SubscriptionId::new();
    let mut feed = traffic.subscribe();
    let accepted = SubscribeAcceptedPayload { subscription_id: subscription.clone() };
    let _ = ctx.outbound.send(reply(MessageType::SubscribeAccepted(accepted), Some(id))).await;
    let (ctx, filter, sub, request_id) = (ctx.clone(), request.filter, subscription.clone(), id.clone());
    let task = tokio::spawn(async move {
        loop {
            let traffic = match feed.recv().await {
                Ok(traffic) => traffic,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let closed = SubscribeClosedPayload {
                        subscription_id: sub.clone(),
                        code: ErrorCode::BackpressureOverflow,
                        reason: format!("the subscriber fell {missed} envelopes behind; subscribe again"),
                    };
                    let _ = ctx.outbound.send(reply(MessageType::SubscribeClosed(closed), Some(&request_id))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if traffic.principal != ctx.principal || !matches(&filter, &traffic) {
                continue;
            }
            let Ok(event) = serde_json::from_str(&traffic.json) else { continue };
            let mut envelope = reply(MessageType::SubscribeEvent(SubscribeEventPayload { event }), Some(&request_id));
            envelope.subscription_id = Some(sub.clone());
            if ctx.outbound.send(envelope).await.is_err() {
                return;
            }
        }
    });
    Ok((subscription, task))
}

fn matches(filter: &SubscriptionFilter, traffic: &Traffic) -> bool {
    let any =
        |list: &[String], value: Option<&str>| list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v));
    let sessions: Vec<String> = filter.session_id.iter().map(|s| s.as_str().to_owned()).collect();
    let jobs: Vec<String> = filter.job_id.iter().map(|j| j.as_str().to_owned()).collect();
    any(&sessions, Some(&traffic.session_id))
        && any(&jobs, traffic.job_id.as_deref())
        && any(&filter.types, Some(traffic.type_name))
        && filter.trace_id.is_empty()
        && filter.stream_id.is_empty()
        && filter.min_priority.is_none_or(|p| matches!(p, Priority::Low | Priority::Normal))
}

/// `resume`: follows again every job of the session that sent `after_message_id`.
pub async fn resume(
    ctx: &SessionContext,
    id: &MessageId,
    request: ResumePayload,
) -> Result<Vec<Followed>, Envelope> {
    let invalid = |message: &str| nack(ErrorCode::InvalidArgument, message, Some(id));
    let after = request.after_message_id.ok_or_else(|| invalid("resume needs after_message_id"))?;
    let (job, seq, k) = parse_event_message_id(after.as_str())
        .ok_or_else(|| invalid("after_message_id is not a job event id this host sent (msg_<job>.<seq>.<k>)"))?;
    let named = own_job(ctx, job_id(job).as_str(), id).await?;
    let store = ctx.manager.store();
    let unavailable = |e: crate::store::StoreError| nack(ErrorCode::Unavailable, e.to_string(), Some(id));
    let old = store
        .follower_of(&ctx.principal, &named.id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| nack(ErrorCode::NotFound, "no session followed that job", Some(id)))?;
    let jobs = store.followed_by(&ctx.principal, &old).await.map_err(unavailable)?;
    let note = format!("resuming {} job(s) of {old}", jobs.len());
    let _ = ctx.outbound.send(reply(MessageType::Ack(AckPayload { note: Some(note) }), Some(id))).await;
    let mut followers = Vec::with_capacity(jobs.len());
    for followed in jobs {
        let Ok(Some(job)) = store.get_job(&followed.job_id).await else { continue };
        let Ok(request) = followed.request_id.parse::<MessageId>() else { continue };
        let start = if job.id == named.id { Resume::AfterEnvelope { seq, k } } else { Resume::From(0) };
        followers.push(follow(ctx, &job, request, start));
    }
    Ok(followers)
}
