//! A fake corral server: the `/v1` routes with canned jobs, and event streams whose connections
//! can be told to drop, hang, or ignore `Last-Event-ID`, so the client's resume logic can be
//! driven through every path.
#![allow(
    dead_code,
    clippy::result_large_err,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// How one connection to a job's event stream behaves.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// Send only events after `Last-Event-ID` / `?after` (a correct server); `false` replays all.
    pub honour_resume: bool,
    /// Send at most this many events, then end the way `end` says.
    pub max_events: Option<usize>,
    pub end: End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// Close the response properly.
    Clean,
    /// Abort the connection (a body error: no final chunk).
    Abort,
    /// Send half of the next event's bytes, then abort.
    AbortMidEvent,
    /// Keep the stream open with keepalive comments.
    Hang,
}

impl Conn {
    pub const FULL: Conn = Conn { honour_resume: true, max_events: None, end: End::Clean };
}

#[derive(Debug, Clone)]
pub struct FakeJob {
    pub job: Value,
    pub events: Vec<Value>,
    /// Connection `i` follows `plan[i]`; later ones follow the last entry.
    pub plan: Vec<Conn>,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Every submit body, with the `wait` query (if any).
    pub submits: Vec<(Value, Option<String>)>,
    /// `Last-Event-ID` of each event-stream connection, per job.
    pub resumes: HashMap<String, Vec<Option<String>>>,
    pub authorizations: Vec<Option<String>>,
    pub list_queries: Vec<HashMap<String, String>>,
    pub cancels: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Fake {
    pub jobs: HashMap<String, FakeJob>,
    /// Agent name (before `@`) → the job id a submit returns.
    pub agents: HashMap<String, String>,
    pub token: Option<String>,
    /// Pause before each event (0 in tests; a demo sets it to watch the progress bar).
    pub pace: Duration,
    pub seen: Seen,
}

pub type Shared = Arc<Mutex<Fake>>;

pub fn job(id: &str, agent: &str, status: &str) -> Value {
    json!({
        "id": id, "agent": agent, "agent_version": "0.1.0", "status": status,
        "input": {}, "lease": {}, "parent_id": null, "attempt": 1,
        "created_at": "2025-06-01T12:00:00Z", "started_at": null, "finished_at": null,
    })
}

pub fn event(seq: u64, kind: &str, data: Value) -> Value {
    json!({"seq": seq, "kind": kind, "at": "2025-06-01T12:00:01Z", "data": data})
}

/// The canned world most tests use.
pub fn standard() -> Fake {
    let mut fake = Fake::default();

    let mut echo = job("job-echo", "echo", "completed");
    echo["output"] = json!({"greeting": "hello"});
    fake.add(
        "echo",
        echo,
        vec![
            event(1, "state", json!({"status": "queued"})),
            event(2, "state", json!({"status": "running"})),
            event(3, "log", json!({"level": "info", "message": "starting"})),
            event(4, "progress", json!({"done": 1, "total": 2, "message": "half"})),
            event(
                5,
                "capability",
                json!({"scope": "kv.write", "target": "counter/x", "decision": "deny", "reason": "no kv.write grant"}),
            ),
            event(6, "chunk", json!({"data": "partial "})),
            event(7, "chunk", json!({"data": "text"})),
            event(8, "state", json!({"status": "completed", "output": {"greeting": "hello"}})),
        ],
        vec![Conn::FULL],
    );

    let mut failed = job("job-failed", "fail", "failed");
    failed["error"] = json!({"code": "trap", "message": "agent trapped: unreachable"});
    fake.add(
        "fail",
        failed,
        vec![
            event(1, "state", json!({"status": "running"})),
            event(2, "log", json!({"level": "error", "message": "about to trap"})),
            event(
                3,
                "state",
                json!({"status": "failed", "error": {"code": "trap", "message": "agent trapped: unreachable"}}),
            ),
        ],
        vec![Conn::FULL],
    );

    fake.add(
        "slow",
        job("job-running", "slow", "running"),
        vec![event(1, "state", json!({"status": "queued"})), event(2, "state", json!({"status": "running"}))],
        vec![Conn { honour_resume: true, max_events: None, end: End::Hang }],
    );

    let numbered: Vec<Value> = (1..=5)
        .map(|n| event(n, "log", json!({"level": "info", "message": format!("line {n}")})))
        .chain(std::iter::once(event(6, "state", json!({"status": "completed", "output": 6}))))
        .collect();
    let mut flaky = job("job-flaky", "flaky", "completed");
    flaky["output"] = json!(6);
    fake.add(
        "flaky",
        flaky.clone(),
        numbered.clone(),
        vec![
            Conn { honour_resume: true, max_events: Some(3), end: End::Abort },
            Conn { honour_resume: true, max_events: Some(1), end: End::AbortMidEvent },
            Conn { honour_resume: true, max_events: Some(1), end: End::Clean },
            Conn::FULL,
        ],
    );

    let mut replay = flaky.clone();
    replay["id"] = json!("job-replay");
    fake.add(
        "replay",
        replay,
        numbered,
        vec![
            Conn { honour_resume: false, max_events: Some(2), end: End::Clean },
            Conn { honour_resume: false, max_events: Some(4), end: End::Abort },
            Conn { honour_resume: false, max_events: None, end: End::Clean },
        ],
    );

    fake.add("lost", job("job-lost", "lost", "running"), vec![], vec![Conn::FULL]);
    fake
}

impl Fake {
    pub fn add(&mut self, agent: &str, job: Value, events: Vec<Value>, plan: Vec<Conn>) {
        let id = job["id"].as_str().unwrap().to_owned();
        self.agents.insert(agent.to_owned(), id.clone());
        self.jobs.insert(id, FakeJob { job, events, plan });
    }
}

/// Serves `fake` on a free loopback port; returns its base URL and the shared state.
pub async fn serve(fake: Fake) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(fake));
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/agents", get(agents))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .with_state(state.clone());
    let addr = std::env::var("FAKE_ADDR").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let mut fake = state.lock().unwrap();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    fake.seen.authorizations.push(auth.clone());
    match &fake.token {
        Some(token) if auth.as_deref() != Some(&format!("Bearer {token}")) => {
            Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token"))
        }
        _ => Ok(()),
    }
}

async fn agents(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    Json(json!({"agents": [
        {"name": "echo", "description": "Returns its input", "latest": "0.2.0", "versions": [
            {"version": "0.1.0", "sha256": "aa", "scopes": ["log"]},
            {"version": "0.2.0", "sha256": "bb", "scopes": ["log", "kv.read"]}
        ]},
        {"name": "fetch", "description": "Fetches a URL", "latest": "1.0.0", "versions": [
            {"version": "1.0.0", "sha256": "cc", "scopes": ["net.fetch"]}
        ]}
    ]}))
    .into_response()
}

async fn submit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut fake = state.lock().unwrap();
    let wait = query.get("wait").cloned();
    fake.seen.submits.push((body.clone(), wait.clone()));
    let agent = body["agent"].as_str().unwrap_or_default();
    let name = agent.split('@').next().unwrap_or_default();
    let Some(id) = fake.agents.get(name).cloned() else {
        return error(StatusCode::NOT_FOUND, "agent_not_found", &format!("no agent named '{name}' is registered"));
    };
    let mut job = fake.jobs[&id].job.clone();
    let finished = job["status"] != "running";
    match wait {
        Some(_) if finished => (StatusCode::OK, Json(job)).into_response(),
        _ => {
            if finished {
                job["status"] = json!("queued");
                job.as_object_mut().unwrap().remove("output");
                job.as_object_mut().unwrap().remove("error");
            }
            (StatusCode::ACCEPTED, Json(job)).into_response()
        }
    }
}

async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut fake = state.lock().unwrap();
    fake.seen.list_queries.push(query.clone());
    let mut jobs: Vec<Value> = fake
        .jobs
        .values()
        .map(|j| j.job.clone())
        .filter(|j| query.get("status").is_none_or(|s| j["status"] == *s))
        .filter(|j| query.get("agent").is_none_or(|a| j["agent"] == *a))
        .collect();
    jobs.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let next = (jobs.len() > limit).then(|| "cursor-2".to_owned());
    jobs.truncate(limit);
    Json(json!({"jobs": jobs, "next_cursor": next})).into_response()
}

async fn get_job(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let fake = state.lock().unwrap();
    match fake.jobs.get(&id) {
        Some(j) => Json(j.job.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "job_not_found", &format!("no job with id '{id}'")),
    }
}

async fn cancel(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut fake = state.lock().unwrap();
    fake.seen.cancels.push(id.clone());
    let Some(j) = fake.jobs.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "job_not_found", &format!("no job with id '{id}'"));
    };
    if j.job["status"] != "running" && j.job["status"] != "queued" {
        return error(StatusCode::CONFLICT, "job_finished", &format!("job '{id}' has already finished"));
    }
    j.job["status"] = json!("cancelled");
    Json(j.job.clone()).into_response()
}

fn sse_bytes(event: &Value) -> String {
    format!("id: {}\nevent: {}\ndata: {}\n\n", event["seq"], event["kind"].as_str().unwrap(), event)
}

async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut fake = state.lock().unwrap();
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let resumes = fake.seen.resumes.entry(id.clone()).or_default();
    resumes.push(last.clone());
    let n = resumes.len() - 1;
    let Some(j) = fake.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, "job_not_found", &format!("no job with id '{id}'"));
    };
    let conn = *j.plan.get(n).unwrap_or_else(|| j.plan.last().unwrap());
    let after: u64 = last.or_else(|| query.get("after").cloned()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let pending: Vec<&Value> =
        j.events.iter().filter(|e| !conn.honour_resume || e["seq"].as_u64().unwrap() > after).collect();
    let take = conn.max_events.unwrap_or(usize::MAX);
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(": hello\n\n"))];
    chunks.extend(pending.iter().take(take).map(|e| Ok(Bytes::from(sse_bytes(e)))));
    let next = pending.get(take).map(|e| sse_bytes(e));
    let tail: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match conn.end {
        End::Clean => futures::stream::empty().boxed(),
        // Wait first, so the events already written reach the client before the connection dies.
        End::Abort => futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("dropped"))
        })
        .boxed(),
        End::AbortMidEvent => {
            let half = next.map(|s| s[..s.len() / 2].to_owned()).unwrap_or_default();
            futures::stream::iter(vec![Ok(Bytes::from(half)), Err(std::io::Error::other("dropped"))])
                .then(|item| async {
                    // Let the half event reach the client before the connection dies.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    item
                })
                .boxed()
        }
        End::Hang => futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(": keepalive\n\n")), ()))
        })
        .boxed(),
    };
    let pace = fake.pace;
    let body = futures::stream::iter(chunks)
        .then(move |item| async move {
            tokio::time::sleep(pace).await;
            item
        })
        .chain(tail);
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}
