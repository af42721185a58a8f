//! The message plane end to end: real hosts, real consumer components (`greeter`, `relay`,
//! hostile `moody`), HTTP producers and external agents, SQLite inspected directly.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Answer, Host, eventually};

impl Host {
    /// `POST /v1/messages` with the host's token.
    pub async fn send_message(&self, body: Value) -> Answer {
        self.request(Method::POST, "/v1/messages", self.token.as_deref(), Some(&body)).await
    }

    /// Sends and returns the id of the (first) copy, asserting it was accepted.
    pub async fn send_ok(&self, body: Value) -> String {
        let answer = self.send_message(body).await;
        assert_eq!(answer.status, 202, "{:?}\n{}", answer.body, self.logs());
        answer.body["messages"][0]["id"].as_str().unwrap().to_owned()
    }

    /// A message with its history.
    pub async fn message(&self, id: &str) -> Value {
        let answer = self.request(Method::GET, &format!("/v1/messages/{id}"), self.token.as_deref(), None).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.body
    }

    /// Waits (bounded) until a message has its outcome.
    pub async fn message_done(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let m = self.message(id).await;
            if m["finished_at"].is_string() {
                return m;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "message {id} never finished: {m}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn kv(&self, namespace: &str, key: &str) -> Option<String> {
        let db = self.db();
        db.query_row("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2", [namespace, key], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

/// The stage names of a message's history, in order.
pub fn stages(m: &Value) -> Vec<String> {
    m["history"].as_array().unwrap().iter().map(|h| h["stage"].as_str().unwrap().to_owned()).collect()
}

fn to_agent(agent: &str, payload: Value) -> Value {
    json!({"recipient": {"agent": agent}, "payload": payload})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_messages_another_and_producer_and_observer_see_received_read_fulfilled() {
    let host = Host::start(&["relay", "greeter"]);
    let job = host
        .run("relay", json!({"send": {"to": "greeter", "payload": {"name": "ada"}, "require_ack": true}}), None)
        .await;
    assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
    let id = job["output"]["ids"][0].as_str().unwrap().to_owned();

    // The observer: the full history, each stage with its time, in order.
    let m = host.message_done(&id).await;
    assert_eq!(stages(&m), ["RECEIVED", "READ", "FULFILLED"], "{m}");
    let times: Vec<&str> = m["history"].as_array().unwrap().iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(m["envelope"]["producer_id"], "relay");
    assert_eq!(m["envelope"]["recipient"], "greeter");
    // B's on-message ran: its kv write committed with the outcome.
    assert_eq!(host.kv("greeter", "greeted").await.as_deref(), Some("1"));
    // A, the producer: `send` returned after RECEIVED; the ACK envelope with the outcome
    // reached its own on-message.
    let seen = eventually("relay records the ack", || async { host.kv("relay", &format!("ack/{id}")).await }).await;
    assert_eq!(seen, "FULFILLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_outside_agent_send_is_a_typed_denial_audited_and_nothing_is_enqueued() {
    let host = Host::start(&["relay", "greeter"]);
    let lease = json!({"grants": {"log": ["**"], "agent.send": ["echo"]}});
    let job = host.run("relay", json!({"send": {"to": "greeter", "payload": {}}}), Some(lease)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert_eq!(job["error"]["scope"], "agent.send", "{job}");
    let db = host.db();
    let messages: i64 = db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
    assert_eq!(messages, 0, "nothing was enqueued");
    let denied: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE scope = 'agent.send' AND target = 'greeter' AND decision = 'deny'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(denied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_consumer_fails_the_message_and_a_rejecting_one_rejects_it() {
    let host = Host::start(&["moody"]);
    let trap = host.send_ok(to_agent("moody", json!({"trap": true}))).await;
    let m = host.message_done(&trap).await;
    assert_eq!(stages(&m), ["RECEIVED", "READ", "FAILED"], "{m}");
    assert!(m["note"].as_str().unwrap().contains("trapped"), "{m}");

    let reject = host.send_ok(to_agent("moody", json!({"reject": "no thanks"}))).await;
    let m = host.message_done(&reject).await;
    assert_eq!(m["stage"], "REJECTED", "{m}");
    assert_eq!(m["error_code"], "VALIDATION_ERROR", "{m}");
    assert_eq!(m["note"], "no thanks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_past_its_ack_timeout_is_timed_out_and_retried_with_backoff_until_retry_attempts() {
    let host = Host::start_with_policy(&["moody"], Some(&crate::harness::spin_policy("")));
    let delivery =
        json!({"ack_timeout_ms": 200, "retry_attempts": 2, "retry_delay_ms": 300, "retry_backoff_factor": 2.0});
    let id =
        host.send_ok(json!({"recipient": {"agent": "moody"}, "payload": {"spin": true}, "delivery": delivery})).await;
    let m = host.message_done(&id).await;
    assert_eq!(
        stages(&m),
        ["RECEIVED", "READ", "TIMED_OUT", "RECEIVED", "READ", "TIMED_OUT", "RECEIVED", "READ", "TIMED_OUT"],
        "{m}"
    );
    assert_eq!(m["stage"], "TIMED_OUT");
    assert_eq!(m["error_code"], "ACK_TIMEOUT");
    let history = m["history"].as_array().unwrap();
    // Each retry is a new attempt: a new message_id, retry_count + 1.
    let attempts: Vec<(u64, &str)> = history
        .iter()
        .filter(|h| h["stage"] == "READ")
        .map(|h| (h["retry_count"].as_u64().unwrap(), h["attempt_id"].as_str().unwrap()))
        .collect();
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_ne!(attempts[0].1, attempts[1].1);
    // Backoff: the second retry waited about twice as long as the first (±20 % jitter).
    let at = |i: usize| {
        time::OffsetDateTime::parse(history[i]["at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let first_wait = at(4) - at(2);
    let second_wait = at(7) - at(5);
    assert!(first_wait >= time::Duration::milliseconds(230), "{first_wait}");
    assert!(second_wait >= time::Duration::milliseconds(470), "{second_wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_buffer_full_no_route_oversize_and_bad_lengths_are_reported_exactly() {
    let policy = "[messages]\ninbox_capacity = 2\nmax_payload_bytes = 1024\n";
    let host = Host::start_with_policy(&["greeter"], Some(policy));
    let answer =
        host.request(Method::POST, "/v1/external-agents", None, Some(&json!({"agent_id": "slow-reader"}))).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);

    // TTL: nobody streams, so the message expires in the inbox.
    let expiring =
        host.send_ok(json!({"recipient": {"agent": "slow-reader"}, "payload": 1, "delivery": {"ttl_ms": 150}})).await;
    let m = host.message_done(&expiring).await;
    assert_eq!((m["stage"].as_str(), m["error_code"].as_str()), (Some("FAILED"), Some("TTL_EXPIRED")), "{m}");

    // BUFFER_FULL: two without an outcome fill the inbox; the third is refused and recorded.
    host.send_ok(to_agent("slow-reader", json!(1))).await;
    host.send_ok(to_agent("slow-reader", json!(2))).await;
    let full = host.send_message(to_agent("slow-reader", json!(3))).await;
    assert_eq!((full.status, full.code()), (429, "buffer_full"), "{:?}", full.body);
    assert_eq!(full.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let rejected: i64 = host
        .db()
        .query_row("SELECT count(*) FROM messages WHERE stage = 'REJECTED' AND error_code = 'BUFFER_FULL'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rejected, 1, "the refusal is recorded, not dropped");

    let nobody = host.send_message(to_agent("nobody", json!(1))).await;
    assert_eq!((nobody.status, nobody.code()), (404, "no_route"), "{:?}", nobody.body);
    let no_subscriber = host.send_message(json!({"recipient": {"topic": "nobody-listens"}, "payload": 1})).await;
    assert_eq!((no_subscriber.status, no_subscriber.code()), (404, "no_route"));

    let big = host.send_message(to_agent("greeter", json!("x".repeat(2000)))).await;
    assert_eq!((big.status, big.code()), (413, "oversize_payload"), "{:?}", big.body);

    let lying = host
        .send_message(json!({"recipient": {"agent": "greeter"}, "payload": {"name": "x"}, "content_length": 3}))
        .await;
    assert_eq!((lying.status, lying.code()), (400, "validation_error"), "{:?}", lying.body);
    let total: i64 = host.db().query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
    assert_eq!(total, 4, "no-route, oversize and invalid messages are not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_sent_ends_in_a_terminal_stage_or_is_still_pending_none_missing() {
    let policy = "[messages]\ninbox_capacity = 20\n";
    let host = Host::start_with_policy(&["greeter", "moody"], Some(policy));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..120 {
        let (agent, payload) = match i % 4 {
            0 => ("moody", json!({"trap": true})),
            1 => ("moody", json!({"reject": "r"})),
            _ => ("greeter", json!({"name": i})),
        };
        let answer = host.send_message(to_agent(agent, payload)).await;
        match answer.status {
            202 => accepted.push(answer.body["messages"][0]["id"].as_str().unwrap().to_owned()),
            429 => refused += 1,
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    for id in &accepted {
        let m = host.message_done(id).await;
        assert!(["FULFILLED", "REJECTED", "FAILED"].contains(&m["stage"].as_str().unwrap()), "{m}");
    }
    let db = host.db();
    let stored: i64 = db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
    let buffer_full: i64 =
        db.query_row("SELECT count(*) FROM messages WHERE error_code = 'BUFFER_FULL'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored as usize, accepted.len() + refused, "every send is stored: accepted or refused");
    assert_eq!(buffer_full as usize, refused);
    let greeted: i64 = host.kv("greeter", "greeted").await.map_or(0, |v| v.parse().unwrap());
    let fulfilled: i64 = db
        .query_row("SELECT count(*) FROM messages WHERE recipient = 'greeter' AND stage = 'FULFILLED'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(greeted, fulfilled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_principal_without_kv_write_cannot_make_a_consumer_write_kv() {
    let policy = r#"
[[principals]]
name = "writer"
token = "writer-token"

[[principals]]
name = "reader"
token = "reader-token"
[principals.ceiling.grants]
"log" = ["**"]
"kv.read" = ["**"]
"agent.send" = ["**"]
"#;
    let mut host = Host::start_with_policy(&["moody"], Some(policy));
    host.token = Some("reader-token".into());
    let id = host.send_ok(to_agent("moody", json!({"kv": true}))).await;
    let m = host.message_done(&id).await;
    assert_eq!(m["stage"], "FAILED", "{m}");
    assert!(m["note"].as_str().unwrap().contains("kv.write"), "{m}");
    assert_eq!(host.kv("moody", "writes").await, None, "the consumer declares kv.write, but the producer may not");
    let db = host.db();
    let (principal, decision): (String, String) = db
        .query_row("SELECT principal, decision FROM audit WHERE job_id = ?1 AND scope = 'kv.write'", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((principal.as_str(), decision.as_str()), ("reader", "deny"));
    // The same message from a principal that may write kv does write.
    host.token = Some("writer-token".into());
    let id = host.send_ok(to_agent("moody", json!({"kv": true}))).await;
    assert_eq!(host.message_done(&id).await["stage"], "FULFILLED");
    assert_eq!(host.kv("moody", "writes").await.as_deref(), Some("1"));
    // And one principal never sees another's messages.
    host.token = Some("reader-token".into());
    let answer = host.request(Method::GET, &format!("/v1/messages/{id}"), Some("reader-token"), None).await;
    assert_eq!((answer.status, answer.code()), (404, "message_not_found"));
    let listed = host.request(Method::GET, "/v1/messages", Some("reader-token"), None).await;
    assert_eq!(listed.body["messages"].as_array().unwrap().len(), 1, "{:?}", listed.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_by_token_return_the_recorded_outcome_and_enqueue_nothing() {
    let host = Host::start(&["greeter"]);
    let body =
        json!({"recipient": {"agent": "greeter"}, "payload": {"name": "once"}, "idempotency_token": "greet:once"});
    let id = host.send_ok(body.clone()).await;
    host.message_done(&id).await;
    let again = host.send_message(body.clone()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["duplicate"], "DUPLICATE_DETECTED");
    assert_eq!(again.body["messages"][0]["id"], id.as_str());
    assert_eq!(again.body["messages"][0]["stage"], "FULFILLED");
    // Sequence numbers dedupe when there is no token.
    let numbered =
        json!({"recipient": {"agent": "greeter"}, "payload": {"name": "n"}, "producer_id": "p", "sequence_number": 7});
    let first = host.send_ok(numbered.clone()).await;
    let second = host.send_message(numbered).await;
    assert!(second.body["duplicate"].is_string(), "{:?}", second.body);
    assert_eq!(second.body["messages"][0]["id"], first.as_str());
    host.message_done(&first).await;
    assert_eq!(host.kv("greeter", "greeted").await.as_deref(), Some("2"));
    assert_eq!(host.kv("greeter", "seen/greet:once").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_waits_for_the_correlated_reply_and_topics_fan_out_to_subscribers() {
    let host = Host::start(&["relay", "greeter"]);
    let job = host.run("relay", json!({"ask": {"to": "greeter", "name": "grace"}}), None).await;
    assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
    assert_eq!(job["output"]["reply"], json!({"greeting": "hello, grace"}));
    assert_eq!(job["output"]["from"], "greeter");

    let answer = host
        .request(
            Method::POST,
            "/v1/external-agents",
            None,
            Some(&json!({"agent_id": "listener", "topics": ["greetings"]})),
        )
        .await;
    assert_eq!(answer.status, 201);
    let sent = host.send_message(json!({"recipient": {"topic": "greetings"}, "payload": {"name": "all"}})).await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let recipients: Vec<&str> = sent.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["envelope"]["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(recipients, ["greeter", "listener"]);
    let (_, agents) = host.get("/v1/agents?capability=greeting").await;
    let names: Vec<&str> = agents["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["greeter"]);
}

/// An open external-agent inbox: the SSE stream of `GET /v1/external-agents/{id}/inbox`.
struct Inbox {
    events: std::pin::Pin<Box<dyn futures::Stream<Item = (i64, Value)> + Send>>,
}

impl Inbox {
    async fn open(host: &Host, agent: &str, token: &str) -> Inbox {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut request = host.client.get(format!("{}/v1/external-agents/{agent}/inbox", host.url));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200, "inbox of {agent}");
        let events = resp.bytes_stream().eventsource().filter_map(|e| async move {
            let e = e.ok()?;
            Some((e.id.parse().ok()?, serde_json::from_str(&e.data).ok()?))
        });
        Inbox { events: Box::pin(events) }
    }

    /// The next delivery (bounded wait).
    async fn next(&mut self) -> (i64, Value) {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(20), self.events.next())
            .await
            .expect("a delivery within 20 s")
            .expect("stream open")
    }
}

const TWO_OWNERS: &str = r#"
[messages]
heartbeat_timeout_ms = 60000

[[principals]]
name = "alice"
token = "alice-token"

[[principals]]
name = "bob"
token = "bob-token"
"#;

async fn release(host: &Host, agent: &str, seq: i64, token: &str, outcome: Value) -> Answer {
    host.request(Method::POST, &format!("/v1/external-agents/{agent}/inbox/{seq}/ack"), Some(token), Some(&outcome))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_agent_streams_and_releases_and_unreleased_messages_come_back() {
    let mut host = Host::start_with_policy(&[], Some(TWO_OWNERS));
    host.token = Some("alice-token".into());
    for agent in ["worker", "other"] {
        let answer = host
            .request(
                Method::POST,
                "/v1/external-agents",
                Some("alice-token"),
                Some(&json!({"agent_id": agent, "capabilities": ["work"]})),
            )
            .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
    }
    let ids: Vec<String> =
        futures::future::join_all((0..3).map(|i| host.send_ok(to_agent("worker", json!({"n": i}))))).await;

    let mut inbox = Inbox::open(&host, "worker", "alice-token").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(inbox.next().await);
    }
    let mut streamed: Vec<String> = got.iter().map(|(_, m)| m["id"].as_str().unwrap().to_owned()).collect();
    streamed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(streamed, expected);
    assert!(got.iter().all(|(_, m)| m["stage"] == "READ"));

    // Only the recipient's owner, and only the recipient, can release.
    let (seq0, first) = &got[0];
    let (seq1, _) = &got[1];
    let bob = release(&host, "worker", *seq1, "bob-token", json!({"outcome": "fulfilled"})).await;
    assert_eq!((bob.status, bob.code()), (404, "external_agent_not_found"));
    let bob_stream = host.request(Method::GET, "/v1/external-agents/worker/inbox", Some("bob-token"), None).await;
    assert_eq!(bob_stream.status, 404);
    let other_agent = release(&host, "other", *seq1, "alice-token", json!({"outcome": "fulfilled"})).await;
    assert_eq!(other_agent.body["recorded"], false, "another agent cannot release worker's message");

    let ok = release(&host, "worker", *seq0, "alice-token", json!({"outcome": "fulfilled"})).await;
    assert_eq!(ok.body["recorded"], true, "{:?}", ok.body);
    let late = release(&host, "worker", *seq0, "alice-token", json!({"outcome": "failed", "note": "late"})).await;
    assert_eq!(late.body["recorded"], false, "a second release changes nothing");
    let done = host.message_done(first["id"].as_str().unwrap()).await;
    assert_eq!(stages(&done), ["RECEIVED", "READ", "FULFILLED"]);

    // Reconnect: the two unreleased messages come back first, under new seqs.
    drop(inbox);
    let mut inbox = Inbox::open(&host, "worker", "alice-token").await;
    let again = [inbox.next().await, inbox.next().await];
    let mut back: Vec<&str> = again.iter().map(|(_, m)| m["id"].as_str().unwrap()).collect();
    back.sort();
    let mut unreleased: Vec<&str> = got[1..].iter().map(|(_, m)| m["id"].as_str().unwrap()).collect();
    unreleased.sort();
    assert_eq!(back, unreleased);
    assert_eq!(
        release(&host, "worker", *seq1, "alice-token", json!({"outcome": "fulfilled"})).await.body["recorded"],
        false,
        "old seqs are void"
    );
    for (seq, _) in &again {
        let r = release(
            &host,
            "worker",
            *seq,
            "alice-token",
            json!({"outcome": "rejected", "code": "VALIDATION_ERROR", "note": "bad n"}),
        )
        .await;
        assert_eq!(r.body["recorded"], true);
    }

    // A delivery whose lease lapses comes back as a new attempt on the open stream.
    let delivery = json!({"ack_timeout_ms": 300, "retry_attempts": 1, "retry_delay_ms": 50});
    let lapsing = host.send_ok(json!({"recipient": {"agent": "worker"}, "payload": 9, "delivery": delivery})).await;
    let (_, first_try) = inbox.next().await;
    assert_eq!(
        (first_try["id"].as_str(), first_try["envelope"]["retry_count"].as_u64()),
        (Some(lapsing.as_str()), Some(0))
    );
    let (seq, second_try) = inbox.next().await;
    assert_eq!(second_try["id"], lapsing.as_str());
    assert_eq!(second_try["envelope"]["retry_count"], 1);
    assert_ne!(second_try["envelope"]["message_id"], first_try["envelope"]["message_id"]);
    assert_eq!(
        release(&host, "worker", seq, "alice-token", json!({"outcome": "fulfilled"})).await.body["recorded"],
        true
    );
    let m = host.message_done(&lapsing).await;
    assert_eq!(stages(&m), ["RECEIVED", "READ", "TIMED_OUT", "RECEIVED", "READ", "FULFILLED"], "{m}");
    // Discovery and visibility: alice sees worker's messages, bob does not.
    let (_, agents) = host.get("/v1/agents?capability=work").await;
    assert_eq!(agents["external"].as_array().unwrap().len(), 2, "{agents}");
    let bob_view = host.request(Method::GET, &format!("/v1/messages/{lapsing}"), Some("bob-token"), None).await;
    assert_eq!(bob_view.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_agent_without_heartbeats_is_unavailable_and_keeps_its_queued_messages() {
    let host = Host::start_with_policy(&[], Some("[messages]\nheartbeat_timeout_ms = 300\n"));
    let register = host.request(Method::POST, "/v1/external-agents", None, Some(&json!({"agent_id": "sleepy"}))).await;
    assert_eq!(register.status, 201);
    let queued = host.send_ok(to_agent("sleepy", json!("kept"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = host.send_message(to_agent("sleepy", json!("refused"))).await;
    assert_eq!((refused.status, refused.code()), (503, "agent_unavailable"), "{:?}", refused.body);
    let beat = host.request(Method::POST, "/v1/external-agents/sleepy/heartbeat", None, None).await;
    assert_eq!(beat.status, 200);
    host.send_ok(to_agent("sleepy", json!("accepted again"))).await;
    assert_eq!(host.message(&queued).await["stage"], "RECEIVED", "the queued message was kept");
}

/// A number in 0..n from the clock (the test needs arbitrary moments, not reproducible ones).
fn arbitrary(n: u64) -> u64 {
    u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()) % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_storm_survives_repeated_kill_9_and_each_token_takes_effect_exactly_once() {
    use std::sync::{Arc, Mutex};
    let policy = "[recovery]\nmax_attempts = 10\n";
    let mut host = Host::start_with_policy(&["greeter", "relay"], Some(policy));

    // Agents messaging agents: relay jobs, each sending 20 tokened messages to greeter. A job
    // cut short by a kill runs again and resends; dedupe turns the resends into no-ops.
    let mut relay_jobs = Vec::new();
    for j in 0..8 {
        let input =
            json!({"send": {"to": "greeter", "payload": {"name": j}, "count": 20, "token": format!("relay-{j}")}});
        relay_jobs.push(host.submit("relay", input, None).await);
    }

    // An external producer that resends each message until it is acknowledged (202, or 200 for
    // a duplicate), whatever happens to the host in between.
    let url = Arc::new(Mutex::new(host.url.clone()));
    let tokens: Vec<String> = (0..300).map(|i| format!("storm-{i}")).collect();
    let producer = {
        let (url, tokens) = (Arc::clone(&url), tokens.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            for token in tokens {
                loop {
                    let base = url.lock().unwrap().clone();
                    let body = json!({"recipient": {"agent": "greeter"}, "payload": {"name": &token}, "idempotency_token": &token});
                    match client.post(format!("{base}/v1/messages")).json(&body).send().await {
                        Ok(r) if r.status().is_success() => break,
                        _ => tokio::time::sleep(Duration::from_millis(30)).await,
                    }
                }
            }
        })
    };

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200 + arbitrary(600))).await;
        host.kill_9();
        host.spawn();
        *url.lock().unwrap() = host.url.clone();
    }
    tokio::time::timeout(Duration::from_secs(120), producer).await.expect("every message acknowledged").unwrap();

    let mut expected_tokens = tokens.clone();
    for (j, id) in relay_jobs.iter().enumerate() {
        let job = host.wait_done(id).await;
        assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
        expected_tokens.extend((0..20).map(|i| format!("relay-{j}-{i}")));
    }
    eventually("every message has its outcome", || async {
        let open: i64 =
            host.db().query_row("SELECT count(*) FROM messages WHERE finished_at IS NULL", [], |r| r.get(0)).unwrap();
        (open == 0).then_some(())
    })
    .await;

    let db = host.db();
    for token in &expected_tokens {
        let (copies, stage): (i64, String) = db
            .query_row("SELECT count(*), max(stage) FROM messages WHERE idempotency_token = ?1", [token], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((copies, stage.as_str()), (1, "FULFILLED"), "{token}");
        assert_eq!(
            host.kv("greeter", &format!("seen/{token}")).await.as_deref(),
            Some("1"),
            "{token} took effect exactly once"
        );
    }
    let greeted: usize = host.kv("greeter", "greeted").await.unwrap().parse().unwrap();
    assert_eq!(greeted, expected_tokens.len(), "one greeting per logical message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_as_buffer_full_is_accepted_when_resent_with_its_token_later() {
    let host = Host::start_with_policy(&[], Some("[messages]\ninbox_capacity = 1\n"));
    let register = host.request(Method::POST, "/v1/external-agents", None, Some(&json!({"agent_id": "narrow"}))).await;
    assert_eq!(register.status, 201);
    let first = host.send_ok(to_agent("narrow", json!("first"))).await;
    let body = json!({"recipient": {"agent": "narrow"}, "payload": "second", "idempotency_token": "second"});
    let full = host.send_message(body.clone()).await;
    assert_eq!(full.status, 429, "{:?}", full.body);
    let mut inbox = Inbox::open(&host, "narrow", "").await;
    let (seq, m) = inbox.next().await;
    assert_eq!(m["id"], first.as_str());
    let released = host
        .request(
            Method::POST,
            &format!("/v1/external-agents/narrow/inbox/{seq}/ack"),
            None,
            Some(&json!({"outcome": "fulfilled"})),
        )
        .await;
    assert_eq!(released.body["recorded"], true);
    let again = host.send_message(body).await;
    assert_eq!(again.status, 202, "a refused try is not a duplicate: {:?}", again.body);
    let (_, second) = inbox.next().await;
    assert_eq!(second["payload"], "second");
}
