//! A typed HTTP client for corral's `/v1` API.
//!
//! It knows the wire shapes (jobs, events, agents, the error envelope) and nothing about how they
//! are shown; `render` and `commands` do that. It must never print: every failure comes back as a
//! [`ClientError`], so the caller decides the exit code and the words.
//!
//! Event streams are the one subtle part. An SSE connection can drop at any moment (server
//! restart, proxy idle timeout); [`EventFollower`] reconnects with `Last-Event-ID` set to the
//! last sequence number it handed out, and drops anything at or below it, so a reader sees each
//! event exactly once and in order until the job's terminal `state` event.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// How long to wait for a TCP connection before declaring the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many reconnects in a row, without a single new event, before an event stream gives up.
const MAX_RECONNECTS: u32 = 5;

/// First pause before reconnecting; doubled after each failed attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--server` is not an http(s) URL.
    #[error("'{url}' is not a usable server URL: {reason}")]
    InvalidServerUrl { url: String, reason: String },

    /// Nothing answered at the server address.
    #[error("cannot reach corral at {server} — is `corral serve` running?")]
    Unreachable { server: String },

    /// The server answered with its JSON error envelope (or at least a non-2xx status).
    #[error("{message} ({code})")]
    Api { status: u16, code: String, message: String },

    /// The connection failed in some other way (reset mid-response, TLS, ...).
    #[error("request to {server} failed: {source}")]
    Transport {
        server: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server sent something this client cannot read; usually a version mismatch.
    #[error("could not read the server's {what}: {reason} — are `corral` and the server the same version?")]
    Decode { what: &'static str, reason: String },

    /// An event stream kept dropping before the job finished.
    #[error("lost the event stream for job {job} after {attempts} reconnects (last event seq {last_seq:?}): {reason}")]
    StreamLost { job: String, attempts: u32, last_seq: Option<u64>, reason: String },
}

impl ClientError {
    /// The HTTP status, when the server answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A job's lifecycle state. Unknown states (a newer server) read as [`JobStatus::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Whether the job can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code": "...", "message": "..."}`, as in the error envelope and a failed job's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// A job as the server reports it. `raw` keeps the exact JSON so `corral job` and `--json` print
/// fields this client does not know about yet.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: String,
    pub agent: String,
    #[serde(default)]
    pub agent_version: Option<String>,
    pub status: JobStatus,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(skip)]
    pub raw: Value,
}

impl Job {
    fn from_value(value: Value) -> Result<Self, ClientError> {
        let mut job: Job = serde_json::from_value(value.clone())
            .map_err(|e| ClientError::Decode { what: "job", reason: e.to_string() })?;
        job.raw = value;
        Ok(job)
    }

    /// `agent@version`, or just the agent while the version is not resolved.
    pub fn agent_ref(&self) -> String {
        match &self.agent_version {
            Some(v) => format!("{}@{v}", self.agent),
            None => self.agent.clone(),
        }
    }
}

/// One page of `GET /v1/jobs`.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
    pub raw: Value,
}

/// Filters for `GET /v1/jobs`; `None` leaves a filter out.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub status: Option<String>,
    pub agent: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// What `POST /v1/jobs` takes.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitJob {
    pub agent: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// One registered agent from `GET /v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub latest: Option<String>,
    #[serde(default)]
    pub versions: Vec<AgentVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentVersion {
    pub version: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct AgentList {
    agents: Vec<Agent>,
}

/// One job event: `{"seq": n, "kind": "...", "at": "...", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub kind: String,
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub data: Value,
}

/// The typed reading of an [`Event`]'s `kind` and `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    State {
        status: JobStatus,
        output: Option<Value>,
        error: Option<ErrorInfo>,
    },
    Log {
        level: String,
        message: String,
    },
    Progress {
        done: u64,
        total: Option<u64>,
        message: Option<String>,
    },
    Chunk {
        data: String,
    },
    Capability {
        scope: String,
        target: String,
        allowed: bool,
        reason: Option<String>,
    },
    Delegated {
        child_id: String,
        agent: String,
    },
    /// A kind this client does not know, or a known kind whose data did not parse.
    Other,
}

impl Event {
    /// Reads `data` according to `kind`; never fails, so a newer server cannot break old clients.
    pub fn body(&self) -> EventBody {
        let d = &self.data;
        let text = |key: &str| d.get(key).and_then(Value::as_str).map(str::to_owned);
        match self.kind.as_str() {
            "state" => match d.get("status").cloned().map(serde_json::from_value::<JobStatus>) {
                Some(Ok(status)) => EventBody::State {
                    status,
                    output: d.get("output").cloned().filter(|v| !v.is_null()),
                    error: d.get("error").cloned().and_then(|e| serde_json::from_value(e).ok()),
                },
                _ => EventBody::Other,
            },
            "log" => EventBody::Log {
                level: text("level").unwrap_or_else(|| "info".to_owned()),
                message: text("message").unwrap_or_default(),
            },
            "progress" => EventBody::Progress {
                done: d.get("done").and_then(Value::as_u64).unwrap_or(0),
                total: d.get("total").and_then(Value::as_u64),
                message: text("message").filter(|m| !m.is_empty()),
            },
            "chunk" => match text("data") {
                Some(data) => EventBody::Chunk { data },
                None => EventBody::Other,
            },
            "capability" => match (text("scope"), text("target")) {
                (Some(scope), Some(target)) => EventBody::Capability {
                    scope,
                    target,
                    allowed: text("decision").as_deref() != Some("deny"),
                    reason: text("reason"),
                },
                _ => EventBody::Other,
            },
            "delegated" => match (text("child_id"), text("agent")) {
                (Some(child_id), Some(agent)) => EventBody::Delegated { child_id, agent },
                _ => EventBody::Other,
            },
            _ => EventBody::Other,
        }
    }

    /// The job status this event moves to, if it is a terminal `state` event.
    pub fn terminal_status(&self) -> Option<JobStatus> {
        match self.body() {
            EventBody::State { status, .. } if status.is_terminal() => Some(status),
            _ => None,
        }
    }
}

/// A connection to one corral server.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `server` is the base URL (`http://127.0.0.1:7070`); `token` is sent as a bearer token.
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidServerUrl { url: server.to_owned(), reason };
        let mut base = Url::parse(server).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".to_owned()));
        }
        if base.cannot_be_a_base() {
            return Err(invalid("it has no host".to_owned()));
        }
        // So that joining "v1/jobs" keeps a path prefix such as http://proxy/corral/.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("corral-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { base, token: token.filter(|t| !t.is_empty()), http })
    }

    /// The server as the user gave it, for messages.
    /// The bearer token, if one was given.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::InvalidServerUrl { url: self.server().to_owned(), reason: e.to_string() })
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        if source.is_connect() {
            ClientError::Unreachable { server: self.server().to_owned() }
        } else {
            ClientError::Transport { server: self.server().to_owned(), source }
        }
    }

    /// Sends a request and returns the JSON body of a 2xx answer, or the server's error.
    async fn send_json(&self, req: reqwest::RequestBuilder, what: &'static str) -> Result<Value, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let resp = check_status(resp).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { what, reason: e.to_string() })
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let url = self.url("healthz")?;
        self.send_json(self.request(reqwest::Method::GET, url), "health check").await.map(|_| ())
    }

    /// `POST /v1/jobs`, waiting up to `wait_ms` for the job to finish when given.
    pub async fn submit(&self, job: &SubmitJob, wait_ms: Option<u64>) -> Result<Job, ClientError> {
        let mut url = self.url("v1/jobs")?;
        if let Some(ms) = wait_ms {
            url.query_pairs_mut().append_pair("wait", &ms.to_string());
        }
        let req = self.request(reqwest::Method::POST, url).json(job);
        Job::from_value(self.send_json(req, "job").await?)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.job_url(id, None)?;
        Job::from_value(self.send_json(self.request(reqwest::Method::GET, url), "job").await?)
    }

    /// `GET /v1/jobs` with filters.
    pub async fn jobs(&self, query: &JobQuery) -> Result<JobPage, ClientError> {
        let mut url = self.url("v1/jobs")?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(s) = &query.status {
                pairs.append_pair("status", s);
            }
            if let Some(a) = &query.agent {
                pairs.append_pair("agent", a);
            }
            if let Some(l) = query.limit {
                pairs.append_pair("limit", &l.to_string());
            }
            if let Some(c) = &query.cursor {
                pairs.append_pair("cursor", c);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let raw = self.send_json(self.request(reqwest::Method::GET, url), "job list").await?;
        let decode = |reason: String| ClientError::Decode { what: "job list", reason };
        let items = raw.get("jobs").and_then(Value::as_array).ok_or_else(|| decode("no `jobs` array".to_owned()))?;
        let jobs = items.iter().cloned().map(Job::from_value).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = raw.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
        Ok(JobPage { jobs, next_cursor, raw })
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.job_url(id, Some("cancel"))?;
        Job::from_value(self.send_json(self.request(reqwest::Method::POST, url), "job").await?)
    }

    /// `GET /v1/agents`; returns the typed list and the raw answer.
    pub async fn agents(&self) -> Result<(Vec<Agent>, Value), ClientError> {
        let url = self.url("v1/agents")?;
        let raw = self.send_json(self.request(reqwest::Method::GET, url), "agent list").await?;
        let list: AgentList = serde_json::from_value(raw.clone())
            .map_err(|e| ClientError::Decode { what: "agent list", reason: e.to_string() })?;
        Ok((list.agents, raw))
    }

    /// `POST /v1/messages` with a JSON body; the raw answer.
    pub async fn send_message(&self, body: &Value) -> Result<Value, ClientError> {
        let url = self.url("v1/messages")?;
        self.send_json(self.request(reqwest::Method::POST, url).json(body), "message").await
    }

    /// `GET /v1/messages/{id}`; the raw answer.
    pub async fn message(&self, id: &str) -> Result<Value, ClientError> {
        let mut url = self.url("v1/messages/")?;
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidServerUrl { url: self.server().to_owned(), reason: "no path".into() })?
            .pop_if_empty()
            .push(id);
        self.send_json(self.request(reqwest::Method::GET, url), "message").await
    }

    /// `GET /v1/messages` with these query pairs; the raw answer.
    pub async fn messages(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let mut url = self.url("v1/messages")?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        self.send_json(self.request(reqwest::Method::GET, url), "message list").await
    }

    /// `GET /v1/secrets`; the raw answer.
    pub async fn secrets(&self) -> Result<Value, ClientError> {
        let url = self.url("v1/secrets")?;
        self.send_json(self.request(reqwest::Method::GET, url), "secret list").await
    }

    /// `PUT /v1/secrets/{name}` with this body; the secret as listed.
    pub async fn set_secret(&self, name: &str, body: &Value) -> Result<Value, ClientError> {
        let url = self.secret_url(name)?;
        self.send_json(self.request(reqwest::Method::PUT, url).json(body), "secret").await
    }

    /// `DELETE /v1/secrets/{name}`.
    pub async fn remove_secret(&self, name: &str) -> Result<(), ClientError> {
        let url = self.secret_url(name)?;
        self.send_json(self.request(reqwest::Method::DELETE, url), "secret removal").await.map(|_| ())
    }

    /// A federation call (`corral swarm …`): `segments` are the path under `/v1/`, each
    /// escaped as one segment.
    pub async fn swarm_call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut url = self.url("v1/")?;
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidServerUrl { url: self.server().to_owned(), reason: "no path".into() })?
            .pop_if_empty()
            .extend(segments);
        for (key, value) in query {
            url.query_pairs_mut().append_pair(key, value);
        }
        let mut req = self.request(method, url);
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send_json(req, "swarm answer").await
    }

    fn secret_url(&self, name: &str) -> Result<Url, ClientError> {
        let mut url = self.url("v1/secrets/")?;
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidServerUrl { url: self.server().to_owned(), reason: "no path".into() })?
            .pop_if_empty()
            .push(name);
        Ok(url)
    }

    /// Follows `GET /v1/jobs/{id}/events`, starting after `after` (or from the beginning).
    pub fn events(&self, job: &str, after: Option<u64>) -> EventFollower {
        EventFollower {
            client: self.clone(),
            job: job.to_owned(),
            last_seq: after,
            stream: None,
            delivered_on_this_connection: 0,
            failures: 0,
            done: false,
        }
    }

    /// `v1/jobs/{id}[/suffix]`, with the id percent-encoded as one path segment.
    fn job_url(&self, id: &str, suffix: Option<&str>) -> Result<Url, ClientError> {
        let mut url = self.url("v1/jobs")?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| ClientError::InvalidServerUrl {
                url: self.server().to_owned(),
                reason: "it has no host".to_owned(),
            })?;
            segments.push(id);
            if let Some(s) = suffix {
                segments.push(s);
            }
        }
        Ok(url)
    }

    async fn open_events(&self, job: &str, after: Option<u64>) -> Result<SseStream, ClientError> {
        let url = self.job_url(job, Some("events"))?;
        let mut req = self.request(reqwest::Method::GET, url).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(seq) = after {
            req = req.header("Last-Event-ID", seq.to_string());
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let resp = check_status(resp).await?;
        Ok(Box::pin(resp.bytes_stream().eventsource()))
    }
}

type SseStream = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// Turns a non-2xx answer into [`ClientError::Api`], reading the `{"error": {...}}` envelope.
async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(Deserialize)]
    struct Envelope {
        error: ErrorInfo,
    }
    let (code, message) = match serde_json::from_slice::<Envelope>(&body) {
        Ok(env) => (env.error.code, env.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(200).collect();
            let reason = status.canonical_reason().unwrap_or("error");
            let message = if text.is_empty() { format!("the server answered {status}") } else { text };
            (reason.to_lowercase().replace(' ', "_"), message)
        }
    };
    Err(ClientError::Api { status: status.as_u16(), code, message })
}

/// Reads a job's events in order, exactly once each, across dropped connections.
///
/// Call [`EventFollower::next`] until it returns `None` (the job's terminal `state` event was the
/// last one handed out, or the job was already finished with nothing newer to send).
pub struct EventFollower {
    client: Client,
    job: String,
    last_seq: Option<u64>,
    stream: Option<SseStream>,
    delivered_on_this_connection: u64,
    /// Consecutive connection attempts that produced no new event.
    failures: u32,
    done: bool,
}

impl std::fmt::Debug for EventFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFollower")
            .field("job", &self.job)
            .field("last_seq", &self.last_seq)
            .field("connected", &self.stream.is_some())
            .field("done", &self.done)
            .finish()
    }
}

impl EventFollower {
    /// The sequence number of the last event handed out (or the starting `after`).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The next event, `None` once the job has ended, or an error once reconnecting has failed
    /// [`MAX_RECONNECTS`] times in a row (or at once for a 4xx such as an unknown job).
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.connect().await {
                    return Some(Err(e));
                }
                continue;
            };
            let (reason, clean_and_empty) = match stream.next().await {
                Some(Ok(sse)) => match parse_sse(&sse) {
                    Ok(event) => {
                        if self.last_seq.is_some_and(|last| event.seq <= last) {
                            continue; // a replay of something already handed out
                        }
                        self.last_seq = Some(event.seq);
                        self.failures = 0;
                        self.delivered_on_this_connection += 1;
                        if event.terminal_status().is_some() {
                            self.done = true;
                            self.stream = None;
                        }
                        return Some(Ok(event));
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Some(Err(e)) => (e.to_string(), false),
                None => (
                    "the server closed the stream before the job finished".to_owned(),
                    self.delivered_on_this_connection == 0,
                ),
            };
            // The connection dropped before the terminal event.
            self.stream = None;
            if let Err(e) = self.after_drop(reason, clean_and_empty).await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        loop {
            match self.client.open_events(&self.job, self.last_seq).await {
                Ok(stream) => {
                    self.stream = Some(stream);
                    self.delivered_on_this_connection = 0;
                    return Ok(());
                }
                // The job does not exist, or we may not see it: retrying cannot help.
                Err(e @ ClientError::Api { status: 400..=499, .. }) => {
                    self.done = true;
                    return Err(e);
                }
                // Before the first event, an unreachable server is the user's problem to fix.
                Err(e @ ClientError::Unreachable { .. }) if self.last_seq.is_none() && self.failures == 0 => {
                    self.done = true;
                    return Err(e);
                }
                Err(e) => self.after_drop(e.to_string(), false).await?,
            }
        }
    }

    /// Counts a failed or empty connection, gives up past the limit, otherwise backs off. A
    /// clean end with nothing new may also mean the job had finished before we (re)connected and
    /// we already hold every event: then there is nothing left to wait for.
    async fn after_drop(&mut self, reason: String, clean_and_empty: bool) -> Result<(), ClientError> {
        if clean_and_empty
            && let Ok(job) = self.client.job(&self.job).await
            && job.status.is_terminal()
        {
            // The server replayed everything after `last_seq` and closed: with the job over,
            // there is nothing newer than what we already handed out.
            self.done = true;
            return Ok(());
        }
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(ClientError::StreamLost {
                job: self.job.clone(),
                attempts: MAX_RECONNECTS,
                last_seq: self.last_seq,
                reason,
            });
        }
        let backoff = RECONNECT_BACKOFF.saturating_mul(1 << (self.failures - 1).min(4));
        tokio::time::sleep(backoff).await;
        Ok(())
    }
}

/// Reads one SSE message. The `seq` in the JSON wins; the SSE `id` fills in if it is missing.
fn parse_sse(sse: &eventsource_stream::Event) -> Result<Event, ClientError> {
    let decode = |reason: String| ClientError::Decode { what: "event stream", reason };
    let mut value: Value = serde_json::from_str(&sse.data).map_err(|e| decode(e.to_string()))?;
    if let Some(obj) = value.as_object_mut() {
        if !obj.contains_key("seq")
            && let Ok(seq) = sse.id.parse::<u64>()
        {
            obj.insert("seq".to_owned(), Value::from(seq));
        }
        if !obj.contains_key("kind") && !sse.event.is_empty() {
            obj.insert("kind".to_owned(), Value::from(sse.event.clone()));
        }
    }
    serde_json::from_value(value).map_err(|e| decode(e.to_string()))
}
