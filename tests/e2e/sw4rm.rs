//! SW4RM over gRPC: corral as the Router and Registry of SW4RM's own Python SDK (sw4rm-sdk
//! 0.6.0, unmodified — tests/sw4rm/sdk_scenarios.py), and SW4RM's router scenarios translated
//! with corral's generated tonic client: delivery ACKs release exactly once, unreleased messages
//! come back on reconnect, after their lease lapses and after `kill -9`, only the recipient
//! releases, duplicates are suppressed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use corral::sw4rm::proto::common::Envelope;
use corral::sw4rm::proto::registry::registry_service_client::RegistryServiceClient;
use corral::sw4rm::proto::registry::{AgentDescriptor, RegisterAgentRequest};
use corral::sw4rm::proto::router::router_service_client::RouterServiceClient;
use corral::sw4rm::proto::router::{DeliveryAckRequest, SendMessageRequest, StreamItem, StreamRequest};
use futures::StreamExt;
use serde_json::json;
use tonic::transport::Channel;

use crate::harness::{Host, eventually, repo};

fn python() -> PathBuf {
    let python = repo().join("target/sw4rm-py/bin/python");
    assert!(
        python.is_file(),
        "{} is missing — `./dev test` installs sw4rm-sdk there with tests/sw4rm/setup_python_client.sh",
        python.display()
    );
    python
}

fn scenario_command(host: &Host, name: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/sw4rm/sdk_scenarios.py")).arg(name).arg(host.grpc.as_deref().unwrap()).arg(&host.url);
    cmd
}

/// Runs a scenario to its end; panics with its output unless every check held.
async fn run_scenario(host: &Host, name: &str) -> String {
    let mut cmd = scenario_command(host, name);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        host.logs()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_agents_register_stream_and_send_and_their_acks_show_as_stages() {
    let host = Host::start_grpc(&[], None);
    let out = run_scenario(&host, "sdk_roundtrip").await;
    assert!(out.contains("history is RECEIVED -> READ -> FULFILLED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_agent_sends_to_a_wasm_consumer_and_sees_it_fulfilled() {
    let host = Host::start_grpc(&["greeter"], None);
    run_scenario(&host, "send_to_wasm").await;
    assert_eq!(host.kv("greeter", "greeted").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_agent_gets_replies_and_acks_from_an_sdk_agent() {
    let host = Host::start_grpc(&["relay"], None);
    let mut child = scenario_command(&host, "serve_for_wasm").stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the SDK agent starts");
        lines.push(line.clone());
        if line == "READY" {
            break;
        }
    }
    for name in ["ada", "grace"] {
        let job = host.run("relay", json!({"ask": {"to": "py-echo", "name": name, "timeout_ms": 20000}}), None).await;
        assert_eq!(job["status"], "completed", "{job}\n{lines:?}\n{}", host.logs());
        assert_eq!(job["output"]["reply"]["echoed"], json!({"name": name, "reply": true}), "{job}");
        assert_eq!(job["output"]["from"], "py-echo");
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{lines:?}\n{rest:?}");
    // The SDK agent's FULFILLED ACKs were forwarded to the Wasm producer's on-message.
    let db = host.db();
    let asked: Vec<String> = {
        let mut stmt =
            db.prepare("SELECT id FROM messages WHERE recipient = 'py-echo' AND producer_id = 'relay'").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(asked.len(), 2);
    for id in asked {
        let stage = eventually("relay records the SDK agent's ack", || async {
            host.kv("relay", &format!("ack/{id}")).await.filter(|s| s == "FULFILLED")
        })
        .await;
        assert_eq!(stage, "FULFILLED");
        assert_eq!(crate::messages::stages(&host.message(&id).await), ["RECEIVED", "READ", "FULFILLED"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_grpc_gets_clear_answers_and_the_server_keeps_serving() {
    let host = Host::start_grpc(&["greeter"], None);
    run_scenario(&host, "bad_input").await;
}

async fn channel(host: &Host) -> Channel {
    Channel::from_shared(format!("http://{}", host.grpc.as_deref().unwrap())).unwrap().connect().await.unwrap()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn register(channel: &Channel, agent_id: &str, token: &str) {
    let descriptor = AgentDescriptor { agent_id: agent_id.into(), name: agent_id.into(), ..AgentDescriptor::default() };
    let answer = RegistryServiceClient::new(channel.clone())
        .register_agent(with_token(RegisterAgentRequest { agent: Some(descriptor) }, token))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.accepted, "{}", answer.reason);
}

fn envelope(to: &str, text: &str, token: &str) -> Envelope {
    let payload = json!({"to": to, "text": text}).to_string().into_bytes();
    Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        idempotency_token: token.into(),
        producer_id: "scenario".into(),
        message_type: 2,
        content_type: "application/json".into(),
        content_length: payload.len() as u64,
        payload,
        ..Envelope::default()
    }
}

async fn send(channel: &Channel, env: Envelope, token: &str) -> (bool, String, Option<String>) {
    let response = RouterServiceClient::new(channel.clone())
        .send_message(with_token(SendMessageRequest { msg: Some(env) }, token))
        .await
        .unwrap();
    let code = response.metadata().get("x-sw4rm-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.into_inner();
    (body.accepted, body.reason, code)
}

struct Incoming(tonic::Streaming<StreamItem>);

impl Incoming {
    async fn open(channel: &Channel, agent_id: &str, token: &str) -> Result<Incoming, tonic::Status> {
        let stream = RouterServiceClient::new(channel.clone())
            .stream_incoming(with_token(StreamRequest { agent_id: agent_id.into() }, token))
            .await?;
        Ok(Incoming(stream.into_inner()))
    }

    async fn next(&mut self) -> StreamItem {
        tokio::time::timeout(Duration::from_secs(20), self.0.next())
            .await
            .expect("an item in 20 s")
            .expect("open")
            .unwrap()
    }
}

async fn release(channel: &Channel, agent_id: &str, seq: i64, token: &str) -> Result<bool, tonic::Status> {
    let ack = DeliveryAckRequest { agent_id: agent_id.into(), seq, message_id: String::new(), outcome: 0 };
    Ok(RouterServiceClient::new(channel.clone()).ack_delivery(with_token(ack, token)).await?.into_inner().recorded)
}

const OWNERS: &str = r#"
[[principals]]
name = "alice"
token = "alice-token"

[[principals]]
name = "bob"
token = "bob-token"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sw4rm_router_scenarios_release_once_redeliver_unreleased_and_suppress_duplicates() {
    let mut host = Host::start_grpc(&[], Some(OWNERS));
    host.token = Some("alice-token".into());
    let ch = channel(&host).await;
    register(&ch, "worker", "alice-token").await;
    register(&ch, "other", "alice-token").await;

    // Unauthenticated calls are refused, whatever they ask.
    let anonymous = RouterServiceClient::new(ch.clone())
        .send_message(SendMessageRequest { msg: Some(envelope("worker", "x", "")) })
        .await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);

    let (accepted, reason, _) = send(&ch, envelope("worker", "one", "tok-1"), "alice-token").await;
    assert!(accepted, "{reason}");
    // A duplicate token is suppressed (and says so).
    let (accepted, reason, code) = send(&ch, envelope("worker", "one again", "tok-1"), "alice-token").await;
    assert!(accepted && reason.starts_with("ALREADY_IN_PROGRESS"), "{reason}");
    assert_eq!(code.as_deref(), Some("15"));
    send(&ch, envelope("worker", "two", "tok-2"), "alice-token").await;

    // Only the owner can stream; the recipient gets both with seqs.
    assert_eq!(Incoming::open(&ch, "worker", "bob-token").await.err().unwrap().code(), tonic::Code::NotFound);
    let mut incoming = Incoming::open(&ch, "worker", "alice-token").await.unwrap();
    let first = incoming.next().await;
    let second = incoming.next().await;
    assert!(first.seq > 0 && second.seq > first.seq);
    // A delivery ACK releases exactly once; only the recipient can release.
    assert!(release(&ch, "worker", first.seq, "alice-token").await.unwrap());
    assert!(!release(&ch, "worker", first.seq, "alice-token").await.unwrap());
    assert!(!release(&ch, "other", second.seq, "alice-token").await.unwrap(), "another agent cannot release it");
    assert_eq!(release(&ch, "worker", second.seq, "bob-token").await.unwrap_err().code(), tonic::Code::NotFound);
    let first_id = first.msg.unwrap().message_id;
    assert_eq!(host.message_done(&first_id).await["stage"], "FULFILLED");

    // Reconnect: the unreleased one comes back.
    drop(incoming);
    let mut incoming = Incoming::open(&ch, "worker", "alice-token").await.unwrap();
    let again = incoming.next().await;
    let second_id = second.msg.unwrap().message_id;
    assert_eq!(again.msg.as_ref().unwrap().message_id, second_id, "same attempt after a reconnect");

    // kill -9 with it unreleased: after the restart it is delivered again, as a new attempt.
    drop(incoming);
    host.kill_9();
    host.spawn();
    let ch = channel(&host).await;
    let mut incoming =
        eventually("the stream reopens", || async { Incoming::open(&ch, "worker", "alice-token").await.ok() }).await;
    let after = incoming.next().await;
    let m = after.msg.unwrap();
    assert_eq!(m.retry_count, 1, "a new attempt after the restart");
    assert!(release(&ch, "worker", after.seq, "alice-token").await.unwrap());
    let done = host.message_done(&second_id).await;
    assert_eq!(done["stage"], "FULFILLED");
    assert!(
        done["history"].as_array().unwrap().iter().any(|h| h["note"].as_str().is_some_and(|n| n.contains("restarted"))),
        "{done}"
    );

    // A delivery whose lease lapses comes back on the stream as a new attempt.
    let lapsing = host
        .send_ok(json!({"recipient": {"agent": "worker"}, "payload": "lapse", "delivery": {"ack_timeout_ms": 300, "retry_attempts": 1, "retry_delay_ms": 50}}))
        .await;
    let first_try = incoming.next().await.msg.unwrap();
    assert_eq!((first_try.message_id.as_str(), first_try.retry_count), (lapsing.as_str(), 0));
    let second_try = incoming.next().await;
    assert_eq!(second_try.msg.as_ref().unwrap().retry_count, 1, "redelivered after the lease lapsed");
    assert!(release(&ch, "worker", second_try.seq, "alice-token").await.unwrap());

    // The health service answers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "sw4rm.router.RouterService".into() })
        .await
        .unwrap();
    assert_eq!(serving.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_agent_answers_a_wasm_agent() {
    let host = Host::start_grpc(&["relay"], None);
    let mut child = Command::new(python())
        .arg(repo().join("examples/sw4rm-python/agent.py"))
        .arg("--grpc")
        .arg(host.grpc.as_deref().unwrap())
        .arg("--once")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || (lines.next(), lines)).await.unwrap();
    let (registered, mut lines) = first;
    assert!(registered.unwrap().unwrap().contains("registered"));
    let job = host.run("relay", json!({"ask": {"to": "py-greeter", "name": "ada"}}), None).await;
    assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
    assert_eq!(job["output"]["reply"]["greeting"], "hello, ada", "{job}");
    let status = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = lines.by_ref().map_while(Result::ok).collect();
        (child.wait(), rest)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success(), "{:?}", status.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_serves_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (key.cert.pem(), key.signing_key.serialize_pem());
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let policy = format!(
        "[server]\ngrpc_tls_cert = {:?}\ngrpc_tls_key = {:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let host = Host::start_grpc(&[], Some(&policy));
    let port = host.grpc.as_deref().unwrap().rsplit(':').next().unwrap().to_owned();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let secure = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(secure);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // Plaintext gets no answer from a TLS listener.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut health = tonic_health::pb::health_client::HealthClient::new(plain);
        assert!(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_err());
    }
}
