//! ARCP v1.1 over WebSocket against a real host: the reference `arcp-client` crate, unmodified,
//! runs a Wasm agent; raw JSON frames over a real WebSocket cover the handshake, the job event
//! sequence, cancel, idempotency and the error codes.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Host, spin_policy};

const TOKENS: &str = r#"
[[principals]]
name = "alice"
token = "a-token"

[[principals]]
name = "bob"
token = "b-token"
"#;

fn ws_url(host: &Host) -> String {
    format!("{}/arcp", host.url.replacen("http://", "ws://", 1))
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw ARCP connection: JSON envelopes in and out.
struct Raw {
    socket: Socket,
    next_id: u32,
}

impl Raw {
    async fn connect(host: &Host) -> Raw {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url(host)).await.expect("connect to /arcp");
        Raw { socket, next_id: 0 }
    }

    /// Sends an envelope of `kind` with `payload` (and extra envelope fields); returns its id.
    async fn send(&mut self, kind: &str, payload: Value, extra: Value) -> String {
        self.next_id += 1;
        let id = format!("msg_test{:06}", self.next_id);
        let mut envelope = json!({
            "arcp": "1.1", "id": id, "timestamp": "2026-12-01T00:00:00Z", "type": kind, "payload": payload,
        });
        if let (Some(map), Some(extra)) = (envelope.as_object_mut(), extra.as_object()) {
            map.extend(extra.clone());
        }
        self.socket.send(Message::Text(envelope.to_string().into())).await.unwrap();
        id
    }

    /// The next envelope (bounded wait).
    async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(30)).await.expect("an envelope within 30 s")
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(wait, self.socket.next()).await.ok()??.ok()?;
            match frame {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Opens a session with a bearer token and capabilities; returns `session.accepted`.
    async fn open(&mut self, token: Option<&str>, capabilities: Value) -> Value {
        let auth = match token {
            Some(t) => json!({"scheme": "bearer", "token": t}),
            None => json!({"scheme": "none"}),
        };
        let id = self
            .send(
                "session.open",
                json!({"auth": auth, "client": {"kind": "test", "version": "1"}, "capabilities": capabilities}),
                json!({}),
            )
            .await;
        let answer = self.recv().await;
        assert_eq!(answer["correlation_id"], id, "{answer}");
        answer
    }

    /// Invokes `tool`; returns every envelope correlated to it through the terminal one.
    async fn run(&mut self, tool: &str, arguments: Value, extra: Value) -> Vec<Value> {
        let id = self.send("tool.invoke", json!({"tool": tool, "arguments": arguments}), extra).await;
        self.until_terminal(&id).await
    }

    async fn until_terminal(&mut self, invoke: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let envelope = self.recv().await;
            if envelope["correlation_id"] != invoke {
                continue;
            }
            let kind = envelope["type"].as_str().unwrap_or_default().to_owned();
            seen.push(envelope);
            if matches!(kind.as_str(), "job.completed" | "job.failed" | "job.cancelled") {
                return seen;
            }
        }
    }
}

fn kinds(envelopes: &[Value]) -> Vec<&str> {
    envelopes.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_arcp_client_runs_a_wasm_agent_to_completion() {
    use arcp_client::ARCPClient;
    use arcp_core::messages::{AuthScheme, Capabilities, ClientIdentity, Credentials};
    use arcp_core::transport::websocket::WebSocketTransport;

    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    let transport = WebSocketTransport::dial(&ws_url(&host)).await.unwrap();
    let session = ARCPClient::new(transport)
        .open()
        .unwrap()
        .authenticate(
            Credentials { scheme: AuthScheme::Bearer, token: Some("a-token".into()) },
            ClientIdentity { kind: "arcp-client".into(), version: "2.0.0".into(), fingerprint: None, principal: None },
            Capabilities::default(),
        )
        .await
        .unwrap();
    let job = tokio::time::timeout(Duration::from_secs(30), session.invoke("echo", json!({"hello": "arcp"})))
        .await
        .unwrap()
        .unwrap();
    let value = tokio::time::timeout(Duration::from_secs(30), job.join()).await.unwrap().unwrap();
    assert_eq!(value, json!({"echo": {"hello": "arcp"}}));

    // The job is corral's: durable, owned by alice, visible over HTTP.
    let id = job.job_id.as_str().strip_prefix("job_").unwrap().to_owned();
    let answer = host.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some("a-token"), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "completed");
    let other = host.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some("b-token"), None).await;
    assert_eq!(other.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_ignores_earlier_traffic_negotiates_by_intersection_and_refuses_bad_tokens() {
    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    let mut raw = Raw::connect(&host).await;
    raw.send("tool.invoke", json!({"tool": "echo", "arguments": 1}), json!({})).await;
    raw.send("session.ping", json!({"nonce": "early", "sent_at": "2026-12-01T00:00:00Z"}), json!({})).await;
    let accepted = raw.open(Some("a-token"), json!({"streaming": true, "artifacts": true})).await;
    assert_eq!(accepted["type"], "session.accepted", "the first answer is the handshake: {accepted}");
    let caps = &accepted["payload"]["capabilities"];
    assert_eq!(caps["streaming"], true, "{caps}");
    assert_eq!(caps["artifacts"], false, "corral does not offer it: {caps}");
    assert_eq!(caps["subscriptions"], false, "offered, but the client did not ask: {caps}");
    assert_eq!(caps["durable_jobs"], false, "offered, but the client did not ask: {caps}");
    assert!(caps.get("anonymous").is_none(), "with tokens the host offers no anonymous sessions: {caps}");
    let echo = caps["agents"].as_array().unwrap().iter().find(|a| a["name"] == "echo").unwrap();
    assert_eq!(echo["versions"], json!(["0.1.0"]), "{caps}");
    assert!(accepted["payload"]["session_id"].as_str().unwrap().starts_with("sess_"));

    // Nothing sent before the handshake was acted on.
    assert!(raw.try_recv(Duration::from_millis(300)).await.is_none());
    let jobs = host.request(reqwest::Method::GET, "/v1/jobs", Some("a-token"), None).await;
    assert_eq!(jobs.body["jobs"], json!([]), "{}", jobs.body);

    for (token, auth) in [(Some("wrong"), "bearer"), (None, "none")] {
        let mut raw = Raw::connect(&host).await;
        let rejected = raw.open(token, json!({"anonymous": true})).await;
        assert_eq!(rejected["type"], "session.rejected", "{auth}: {rejected}");
        assert_eq!(rejected["payload"]["code"], "UNAUTHENTICATED", "{rejected}");
        assert!(raw.try_recv(Duration::from_secs(5)).await.is_none(), "the connection closes after a rejection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_streams_started_progress_chunks_and_one_terminal_event_with_increasing_seq() {
    let host = Host::start(&["orchestrator", "echo"]);
    let mut raw = Raw::connect(&host).await;
    let accepted = raw.open(None, json!({"anonymous": true, "streaming": true})).await;
    assert_eq!(accepted["type"], "session.accepted", "{accepted}");

    let tasks = json!({"tasks": [{"agent": "echo", "input": 1}, {"agent": "echo", "input": 2}]});
    let events = raw.run("orchestrator", tasks.clone(), json!({})).await;
    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"job.accepted"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"job.started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"job.completed"), "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("job.") && ["job.completed", "job.failed", "job.cancelled"].contains(k))
            .count(),
        1
    );
    assert!(kinds.contains(&"job.progress") && kinds.contains(&"event.emit") && kinds.contains(&"metric"), "{kinds:?}");

    let job_id = events[0]["payload"]["job_id"].as_str().unwrap();
    assert!(events.iter().all(|e| e["job_id"] == job_id), "every event names the job");
    let seqs: Vec<u64> = events.iter().map(|e| e["event_seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The result chunks reassemble, end with a terminal chunk, and the completion names them.
    let chunks: Vec<&Value> = events.iter().filter(|e| e["type"] == "job.result_chunk").collect();
    assert_eq!(chunks.len(), 3, "two chunks and the terminal one: {kinds:?}");
    assert_eq!(chunks.iter().map(|c| c["payload"]["chunk_seq"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(chunks.iter().map(|c| c["payload"]["more"].as_bool().unwrap()).collect::<Vec<_>>(), [true, true, false]);
    let assembled: String = chunks.iter().map(|c| c["payload"]["data"].as_str().unwrap()).collect();
    assert!(assembled.contains(r#"{"echo":1}"#) && assembled.contains(r#"{"echo":2}"#), "{assembled}");
    let completed = &events.last().unwrap()["payload"];
    assert_eq!(completed["result_id"], chunks[0]["payload"]["result_id"]);
    assert_eq!(completed["result_size"], assembled.len());
    assert_eq!(completed["value"]["results"], json!([{"echo": 1}, {"echo": 2}]));

    // Without `streaming` negotiated no chunks are sent; the value is complete anyway.
    let mut plain = Raw::connect(&host).await;
    plain.open(None, json!({"anonymous": true})).await;
    let events = plain.run("orchestrator", tasks, json!({})).await;
    assert!(!kinds_of(&events).contains(&"job.result_chunk".to_owned()));
    assert_eq!(events.last().unwrap()["payload"]["value"]["results"], json!([{"echo": 1}, {"echo": 2}]));
}

fn kinds_of(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_invokes_get_one_job_failed_with_the_right_code_and_no_job() {
    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    let mut raw = Raw::connect(&host).await;
    raw.open(Some("a-token"), json!({})).await;
    let expired = json!({"lease_request": {"expires_at": "2020-01-01T00:00:00Z"}});
    for (tool, extra_payload, code) in [
        ("Bad Name", json!({}), "INVALID_ARGUMENT"),
        ("nobody", json!({}), "NOT_FOUND"),
        ("echo@9.9.9", json!({}), "AGENT_VERSION_NOT_AVAILABLE"),
        ("echo", expired, "LEASE_EXPIRED"),
        ("echo", json!({"lease_request": {"cost_budget": ["USD:1"]}}), "INVALID_ARGUMENT"),
        ("echo", json!({"cost_budget": ["fuel:0.5"]}), "INVALID_ARGUMENT"),
        ("echo", json!({"lease_request": {"model_use": ["gpt-*"]}}), "UNIMPLEMENTED"),
        ("echo", json!({"lease_request": {"grants": {"nope": ["**"]}}}), "INVALID_ARGUMENT"),
    ] {
        let mut payload = json!({"tool": tool, "arguments": {}});
        payload.as_object_mut().unwrap().extend(extra_payload.as_object().unwrap().clone());
        let id = raw.send("tool.invoke", payload, json!({})).await;
        let events = raw.until_terminal(&id).await;
        assert_eq!(kinds(&events), ["job.failed"], "{tool}: {events:?}");
        assert_eq!(events[0]["payload"]["code"], code, "{tool}: {events:?}");
        assert!(events[0].get("job_id").is_none(), "{tool}: no job was made");
    }
    let jobs = host.request(reqwest::Method::GET, "/v1/jobs", Some("a-token"), None).await;
    assert_eq!(jobs.body["jobs"], json!([]), "nothing was submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_in_fuel_or_host_calls_is_spent_under_the_engine_and_ends_the_job_budget_exhausted() {
    let host = Host::start_with_policy(&["echo", "spin"], Some(&spin_policy(TOKENS)));
    let mut raw = Raw::connect(&host).await;
    raw.open(Some("a-token"), json!({})).await;
    // `spin` loops forever: the fuel budget, not the deadline, ends it.
    for (tool, budget) in [
        ("spin", json!({"cost_budget": ["fuel:2000000"]})),
        ("echo", json!({"lease_request": {"cost_budget": ["host_calls:0"]}})),
    ] {
        let mut payload = json!({"tool": tool, "arguments": {}});
        payload.as_object_mut().unwrap().extend(budget.as_object().unwrap().clone());
        let id = raw.send("tool.invoke", payload, json!({})).await;
        let events = raw.until_terminal(&id).await;
        assert_eq!(events[0]["type"], "job.accepted", "{tool}: {events:?}");
        let failed = events.last().unwrap();
        assert_eq!(
            (failed["type"].as_str(), failed["payload"]["code"].as_str()),
            (Some("job.failed"), Some("BUDGET_EXHAUSTED")),
            "{tool}: {failed}"
        );
    }
    // The same agent with a budget it stays within completes.
    let id = raw
        .send(
            "tool.invoke",
            json!({"tool": "echo", "arguments": 1, "cost_budget": ["host_calls:5", "fuel:100000000"]}),
            json!({}),
        )
        .await;
    assert_eq!(raw.until_terminal(&id).await.last().unwrap()["type"], "job.completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job_across_reconnects_and_refuses_a_different_request() {
    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    let key = json!({"idempotency_key": "arcp-key-1"});
    let mut first = Raw::connect(&host).await;
    first.open(Some("a-token"), json!({})).await;
    let events = first.run("echo", json!({"n": 1}), key.clone()).await;
    let job = events[0]["payload"]["job_id"].clone();
    drop(first);

    let mut again = Raw::connect(&host).await;
    again.open(Some("a-token"), json!({})).await;
    let events = again.run("echo", json!({"n": 1}), key.clone()).await;
    assert_eq!(events[0]["payload"]["job_id"], job, "the same job");
    assert_eq!(events.last().unwrap()["payload"]["value"], json!({"echo": {"n": 1}}));
    let conflict = again.run("echo", json!({"n": 2}), key.clone()).await;
    assert_eq!(kinds(&conflict), ["job.failed"]);
    assert_eq!(conflict[0]["payload"]["code"], "FAILED_PRECONDITION");

    // Keys are per principal: bob's same key is a new job.
    let mut bob = Raw::connect(&host).await;
    bob.open(Some("b-token"), json!({})).await;
    let events = bob.run("echo", json!({"n": 2}), key).await;
    assert_ne!(events[0]["payload"]["job_id"], job);
    assert_eq!(events.last().unwrap()["type"], "job.completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_cancels_its_own_job_and_not_anothers() {
    let host = Host::start_with_policy(&["spin"], Some(&spin_policy(TOKENS)));
    let mut alice = Raw::connect(&host).await;
    alice.open(Some("a-token"), json!({})).await;
    let invoke = alice.send("tool.invoke", json!({"tool": "spin", "arguments": {}}), json!({})).await;
    let accepted = alice.recv().await;
    assert_eq!(accepted["type"], "job.accepted", "{accepted}");
    let job = accepted["payload"]["job_id"].as_str().unwrap().to_owned();

    let mut bob = Raw::connect(&host).await;
    bob.open(Some("b-token"), json!({})).await;
    let id = bob.send("cancel", json!({"target": "job", "target_id": job}), json!({})).await;
    let refused = bob.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["correlation_id"].as_str()),
        (Some("cancel.refused"), Some(id.as_str()))
    );

    let id = alice.send("cancel", json!({"target": "job", "target_id": job}), json!({})).await;
    let mut answers = Vec::new();
    while !answers.iter().any(|e: &Value| e["type"] == "job.cancelled") {
        answers.push(alice.recv().await);
    }
    let accepted = answers.iter().find(|e| e["type"] == "cancel.accepted").expect("cancel.accepted");
    assert_eq!(accepted["correlation_id"], id);
    let cancelled = answers.iter().find(|e| e["type"] == "job.cancelled").unwrap();
    assert_eq!(cancelled["correlation_id"], invoke, "job.cancelled is correlated to the invoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_get_a_nack_and_the_connection_stays_open() {
    let host = Host::start(&["echo"]);
    let mut raw = Raw::connect(&host).await;
    raw.open(None, json!({"anonymous": true})).await;
    for kind in ["arcpx.example.v1.thing", "no.such.type", "interrupt"] {
        let id = raw.send(kind, json!({}), json!({})).await;
        let nack = raw.recv().await;
        assert_eq!(
            (nack["type"].as_str(), nack["correlation_id"].as_str()),
            (Some("nack"), Some(id.as_str())),
            "{kind}"
        );
        assert_eq!(nack["payload"]["code"], "UNIMPLEMENTED", "{kind}: {nack}");
    }
    let id = raw.send("tool.invoke", json!({"arguments": 1}), json!({})).await;
    let nack = raw.recv().await;
    assert_eq!(
        (nack["payload"]["code"].as_str(), nack["correlation_id"].as_str()),
        (Some("INVALID_ARGUMENT"), Some(id.as_str()))
    );
    raw.socket.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(raw.recv().await["payload"]["code"], "INVALID_ARGUMENT");

    let id = raw.send("session.ping", json!({"nonce": "n-1", "sent_at": "2026-12-01T00:00:00Z"}), json!({})).await;
    let pong = raw.recv().await;
    assert_eq!(pong["type"], "session.pong", "{pong}");
    assert_eq!(
        (pong["payload"]["ping_nonce"].as_str(), pong["correlation_id"].as_str()),
        (Some("n-1"), Some(id.as_str()))
    );
    let events = raw.run("echo", json!("still here"), json!({})).await;
    assert_eq!(events.last().unwrap()["type"], "job.completed");
}

/// Opens a session as `token` asking for subscriptions and streaming.
async fn subscriber(host: &Host, token: &str) -> Raw {
    let mut raw = Raw::connect(host).await;
    let accepted = raw.open(Some(token), json!({"subscriptions": true, "streaming": true})).await;
    assert_eq!(accepted["payload"]["capabilities"]["subscriptions"], true, "{accepted}");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_the_principals_jobs_across_sessions_with_filters() {
    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    for n in 0..3 {
        let mut raw = Raw::connect(&host).await;
        raw.open(Some("a-token"), json!({})).await;
        raw.run("echo", json!({"n": n}), json!({})).await;
    }
    let mut bob = Raw::connect(&host).await;
    bob.open(Some("b-token"), json!({})).await;
    bob.run("echo", json!("bob"), json!({})).await;

    let mut raw = Raw::connect(&host).await;
    raw.open(Some("a-token"), json!({})).await;
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..5 {
        let mut request = json!({"limit": 2, "filter": {"status": ["completed"], "agent": "echo"}});
        if !cursor.is_null() {
            request["cursor"] = cursor.clone();
        }
        let id = raw.send("session.list_jobs", request, json!({})).await;
        let page = raw.recv().await;
        assert_eq!(
            (page["type"].as_str(), page["correlation_id"].as_str()),
            (Some("session.jobs"), Some(id.as_str())),
            "{page}"
        );
        for job in page["payload"]["jobs"].as_array().unwrap() {
            assert_eq!(job["status"], "completed");
            assert_eq!(job["agent"], "echo@0.1.0");
            assert!(job["last_event_seq"].as_u64().unwrap() >= 3, "{job}");
            seen.push(job["job_id"].as_str().unwrap().to_owned());
        }
        cursor = page["payload"]["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "alice's three jobs, none of bob's: {seen:?}");
    let id = raw.send("session.list_jobs", json!({"filter": {"status": ["running"]}}), json!({})).await;
    let page = raw.recv().await;
    assert_eq!((page["payload"]["jobs"].clone(), page["correlation_id"].as_str()), (json!([]), Some(id.as_str())));
    raw.send("session.list_jobs", json!({"filter": {"status": ["bogus"]}}), json!({})).await;
    assert_eq!(raw.recv().await["payload"]["code"], "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_subscribe_replays_history_from_a_seq_and_refuses_other_principals_and_unnegotiated_sessions() {
    let host = Host::start_with_policy(&["orchestrator", "echo"], Some(TOKENS));
    let mut alice = Raw::connect(&host).await;
    alice.open(Some("a-token"), json!({"streaming": true})).await;
    let events = alice.run("orchestrator", json!({}), json!({})).await;
    let job = events[0]["payload"]["job_id"].as_str().unwrap().to_owned();
    let original: Vec<(String, u64)> = events[1..]
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["extensions"]["job_event_seq"].as_u64().unwrap()))
        .collect();

    // Not negotiated: refused.
    let id = alice.send("job.subscribe", json!({"job_id": job, "history": true}), json!({})).await;
    let nack = alice.recv().await;
    assert_eq!(
        (nack["payload"]["code"].as_str(), nack["correlation_id"].as_str()),
        (Some("FAILED_PRECONDITION"), Some(id.as_str()))
    );

    // Another session of alice: the whole history from seq 1, with the same envelope ids.
    let mut again = subscriber(&host, "a-token").await;
    let id = again.send("job.subscribe", json!({"job_id": job, "history": true, "from_event_seq": 1}), json!({})).await;
    let subscribed = again.recv().await;
    assert_eq!(subscribed["type"], "job.subscribed", "{subscribed}");
    assert_eq!(subscribed["payload"]["current_status"], "completed");
    assert_eq!(subscribed["payload"]["replayed"], true);
    let replay = again.until_terminal(&id).await;
    let replayed: Vec<(String, u64)> = replay
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["extensions"]["job_event_seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(replayed, original, "the same envelopes, in the same order");

    // From a later seq: exactly the events from there.
    let from = original[original.len() / 2].1;
    let id =
        again.send("job.subscribe", json!({"job_id": job, "history": true, "from_event_seq": from}), json!({})).await;
    again.recv().await;
    let tail = again.until_terminal(&id).await;
    assert!(tail.iter().all(|e| e["extensions"]["job_event_seq"].as_u64().unwrap() >= from));
    assert_eq!(tail.len(), original.iter().filter(|(_, seq)| *seq >= from).count());

    let mut bob = subscriber(&host, "b-token").await;
    let id = bob.send("job.subscribe", json!({"job_id": job, "history": true}), json!({})).await;
    let denied = bob.recv().await;
    assert_eq!(
        (denied["payload"]["code"].as_str(), denied["correlation_id"].as_str()),
        (Some("PERMISSION_DENIED"), Some(id.as_str()))
    );
    bob.send("job.subscribe", json!({"job_id": "job_nope", "history": true}), json!({})).await;
    assert_eq!(bob.recv().await["payload"]["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sees_only_its_own_principals_traffic_and_never_credentials() {
    let host = Host::start_with_policy(&["echo"], Some(TOKENS));
    let mut watcher = subscriber(&host, "a-token").await;
    let id =
        watcher.send("subscribe", json!({"filter": {"types": ["job.completed", "job.accepted"]}}), json!({})).await;
    let accepted = watcher.recv().await;
    assert_eq!(
        (accepted["type"].as_str(), accepted["correlation_id"].as_str()),
        (Some("subscribe.accepted"), Some(id.as_str()))
    );

    let mut bob = Raw::connect(&host).await;
    bob.open(Some("b-token"), json!({})).await;
    bob.run("echo", json!("bob's secret input"), json!({})).await;
    let mut alice = Raw::connect(&host).await;
    alice.open(Some("a-token"), json!({})).await;
    let events = alice.run("echo", json!("alice's"), json!({})).await;
    let alice_job = events[0]["payload"]["job_id"].clone();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let envelope = watcher.recv().await;
        assert_eq!(envelope["type"], "subscribe.event", "{envelope}");
        seen.push(envelope);
    }
    assert!(watcher.try_recv(Duration::from_millis(500)).await.is_none(), "nothing else matched");
    for envelope in &seen {
        assert_eq!(envelope["payload"]["event"]["job_id"], alice_job, "{envelope}");
    }
    let everything = seen.iter().map(Value::to_string).collect::<String>();
    for leak in ["b-token", "a-token", "bob's secret input"] {
        assert!(!everything.contains(leak), "{leak} in {everything}");
    }

    // A session that did not negotiate subscriptions is refused; unsubscribe closes the feed.
    alice.send("subscribe", json!({}), json!({})).await;
    assert_eq!(alice.recv().await["payload"]["code"], "FAILED_PRECONDITION");
    let subscription = accepted["payload"]["subscription_id"].clone();
    watcher.send("unsubscribe", json!({"subscription_id": subscription}), json!({})).await;
    let closed = watcher.recv().await;
    assert_eq!(closed["type"], "subscribe.closed", "{closed}");
}

/// Reads a job's envelopes until `n` of them have arrived, then drops the connection abruptly.
async fn read_some_and_vanish(mut raw: Raw, invoke: &str, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let envelope = raw.recv().await;
        if envelope["correlation_id"] == invoke {
            seen.push(envelope);
        }
    }
    drop(raw); // no close frame
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_an_abrupt_or_a_clean_disconnect_delivers_every_missed_event_in_order() {
    let host = Host::start_with_policy(&["orchestrator", "echo"], Some(TOKENS));
    // The whole event sequence of such a job, for comparison.
    let mut reference = Raw::connect(&host).await;
    reference.open(Some("a-token"), json!({"streaming": true})).await;
    let tasks =
        json!({"tasks": [{"agent": "echo", "input": 1}, {"agent": "echo", "input": 2}, {"agent": "echo", "input": 3}]});
    let full = reference.run("orchestrator", tasks.clone(), json!({})).await;

    for clean in [false, true] {
        let mut raw = Raw::connect(&host).await;
        raw.open(Some("a-token"), json!({"streaming": true})).await;
        let invoke = raw.send("tool.invoke", json!({"tool": "orchestrator", "arguments": tasks}), json!({})).await;
        let seen = if clean {
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let envelope = raw.recv().await;
                if envelope["correlation_id"] == invoke {
                    seen.push(envelope);
                }
            }
            raw.send("session.close", json!({}), json!({})).await;
            let _ = raw.socket.close(None).await;
            seen
        } else {
            read_some_and_vanish(raw, &invoke, 3).await
        };
        let last = seen.last().unwrap()["id"].as_str().unwrap().to_owned();

        let mut resumed = Raw::connect(&host).await;
        resumed.open(Some("a-token"), json!({"streaming": true})).await;
        let id = resumed.send("resume", json!({"after_message_id": last}), json!({})).await;
        let ack = resumed.recv().await;
        assert_eq!((ack["type"].as_str(), ack["correlation_id"].as_str()), (Some("ack"), Some(id.as_str())), "{ack}");
        let rest = resumed.until_terminal(&invoke).await;

        let mut all: Vec<Value> = seen.clone();
        all.extend(rest);
        let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let expected: Vec<&str> = full.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, expected, "clean = {clean}: every event once, in order");
        let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "no duplicates: {ids:?}");
    }

    // Only the principal that followed the job can resume it.
    let mut bob = Raw::connect(&host).await;
    bob.open(Some("b-token"), json!({})).await;
    let someone = full[1]["id"].as_str().unwrap();
    bob.send("resume", json!({"after_message_id": someone}), json!({})).await;
    assert_eq!(bob.recv().await["payload"]["code"], "PERMISSION_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_window_holds_events_for_a_client_that_does_not_ack_and_evicts_it_when_it_never_does() {
    let policy = format!("{TOKENS}\n[arcp]\nack_window = 4\n");
    let host = Host::start_with_policy(&["echo"], Some(&policy));
    // A client that acks runs any number of jobs.
    let mut acking = Raw::connect(&host).await;
    acking.open(Some("a-token"), json!({})).await;
    for n in 0..4 {
        acking.send("tool.invoke", json!({"tool": "echo", "arguments": n}), json!({})).await;
        loop {
            let envelope = acking.recv().await;
            if let Some(seq) = envelope["event_seq"].as_u64() {
                acking.send("session.ack", json!({"last_processed_seq": seq}), json!({})).await;
            }
            if envelope["type"] == "job.completed" {
                break;
            }
        }
    }

    // One that never acks gets the first window and, while the rest is held, still gets pongs;
    // when as many again are waiting it is evicted.
    let mut silent = Raw::connect(&host).await;
    silent.open(Some("a-token"), json!({})).await;
    silent.send("tool.invoke", json!({"tool": "echo", "arguments": 0}), json!({})).await;
    let mut counted = 0;
    while counted < 4 {
        let envelope = silent.recv().await;
        assert!(envelope["event_seq"].is_u64(), "only counted envelopes so far: {envelope}");
        counted += 1;
    }
    let nonce = silent.send("session.ping", json!({"nonce": "p", "sent_at": "2026-12-01T00:00:00Z"}), json!({})).await;
    let pong = silent.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["correlation_id"].as_str()),
        (Some("session.pong"), Some(nonce.as_str())),
        "control traffic flows while events are held: {pong}"
    );
    for n in 1..4 {
        silent.send("tool.invoke", json!({"tool": "echo", "arguments": n}), json!({})).await;
    }
    let mut evicted = None;
    while let Some(envelope) = silent.try_recv(Duration::from_secs(30)).await {
        if envelope["type"] == "session.evicted" {
            evicted = Some(envelope);
            break;
        }
        counted += 1;
    }
    assert_eq!(counted, 4, "nothing past the window was sent");
    let evicted = evicted.expect("evicted");
    assert_eq!(evicted["payload"]["code"], "BACKPRESSURE_OVERFLOW", "{evicted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_principal_and_frame_size_are_bounded() {
    let policy = format!("{TOKENS}\n[arcp]\nmax_sessions_per_principal = 2\nmax_frame_bytes = 65536\n");
    let host = Host::start_with_policy(&["echo"], Some(&policy));
    let mut first = Raw::connect(&host).await;
    assert_eq!(first.open(Some("a-token"), json!({})).await["type"], "session.accepted");
    let mut second = Raw::connect(&host).await;
    assert_eq!(second.open(Some("a-token"), json!({})).await["type"], "session.accepted");
    let mut third = Raw::connect(&host).await;
    let rejected = third.open(Some("a-token"), json!({})).await;
    assert_eq!(
        (rejected["type"].as_str(), rejected["payload"]["code"].as_str()),
        (Some("session.rejected"), Some("RESOURCE_EXHAUSTED"))
    );
    let mut bob = Raw::connect(&host).await;
    assert_eq!(bob.open(Some("b-token"), json!({})).await["type"], "session.accepted", "per principal");
    drop(second);
    let reopened = eventually_open(&host).await;
    assert_eq!(reopened["type"], "session.accepted", "a closed session gives its slot back");

    let big = "x".repeat(100_000);
    first.send("tool.invoke", json!({"tool": "echo", "arguments": big}), json!({})).await;
    assert!(first.try_recv(Duration::from_secs(10)).await.is_none(), "an oversized frame closes the connection");
}

async fn eventually_open(host: &Host) -> Value {
    for _ in 0..50 {
        let mut raw = Raw::connect(host).await;
        let answer = raw.open(Some("a-token"), json!({})).await;
        if answer["type"] == "session.accepted" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no session slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_is_an_arcp_client_that_prints_the_result_and_exits_by_outcome() {
    let host = Host::start_with_policy(&["echo", "spin", "orchestrator"], Some(&spin_policy(TOKENS)));
    let out = arcp_cli(&host, &["echo", "--input", r#"{"n": 1}"#, "--idempotency-key", "cli-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap(), json!({"echo": {"n": 1}}));
    assert!(out.stderr.contains("job job_"), "{out:?}");

    // A streamed result is reassembled from its chunks; --json prints every envelope.
    let tasks = r#"{"tasks": [{"agent": "echo", "input": 1}]}"#;
    let out = arcp_cli(&host, &["orchestrator", "--input", tasks, "--url", &ws_url(&host), "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let kinds: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("session.accepted"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("job.completed"), "{kinds:?}");

    let out = arcp_cli(&host, &["spin", "--cost-budget", "fuel:1000000"]).await;
    assert_eq!(out.code, 1, "a failed job exits 1: {out:?}");
    assert!(out.stderr.contains("BUDGET_EXHAUSTED"), "{out:?}");

    let out = arcp_cli(&host, &["echo", "--cost-budget", "USD:1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("INVALID_ARGUMENT") && out.stderr.contains("USD"), "{out:?}");

    let bad = host.cli(&["--token", "nope", "arcp", "invoke", "echo"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("session rejected: UNAUTHENTICATED"), "{bad:?}");
}

/// `corral --token a-token arcp invoke ARGS…`.
async fn arcp_cli(host: &Host, args: &[&str]) -> crate::harness::CliOutput {
    let mut all = vec!["--token", "a-token", "arcp", "invoke"];
    all.extend_from_slice(args);
    host.cli(&all).await
}
