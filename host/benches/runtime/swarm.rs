//! Figure 9, federation: signed ASP messages per second from one corral host to another,
//! side by side with the sending host's job throughput in the same run.
//!
//! Two hosts in one swarm over TLS (a certificate made here). Producers send through host A's
//! operator API (`POST /v1/swarms/{id}/messages`, 32 connections): each send signs the message
//! (corral-lp/1) and commits it to A's outbox before it is answered; A's outbox posts it to B's
//! `/swarm/message`, where it is verified (member, key, scheme, skew, replay) and committed to
//! B's inbox. What counts is B's side: messages B recorded during the measured window, by their
//! stored `received_at`. Every accepted send must arrive (checked once the outbox drains).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::host::{Corral, HostDirs};
use crate::load::{Expect, Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, SUBMIT_AND_WAIT, check};

const QUEUED: Expect = Expect { status: &[200], contains: Some(r#""status":"queued""#) };

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn swarm_policy(cert: &std::path::Path, key: &std::path::Path, port: u16) -> String {
    format!(
        "{}\n[swarm]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\npeer_ca = [{:?}]\n\
         outbox_interval_ms = 20\nrate_limit = {{ per_s = 1000000, burst = 1000000 }}\n",
        crate::host::policy(None),
        cert.display().to_string(),
        key.display().to_string(),
        cert.display().to_string()
    )
}

async fn call(client: &reqwest::Client, corral: &Corral, method: reqwest::Method, path: &str, body: Value) -> Value {
    let answer = client
        .request(method, format!("http://{}{path}", corral.addr))
        .json(&body)
        .send()
        .await
        .expect("call the operator API");
    let status = answer.status();
    let value: Value = answer.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

pub fn run(bench: &Bench, report: &mut Report) {
    let connections = bench.opts.connections();
    let plan = Plan::Timed { warmup: bench.warmup(), measure: bench.opts.duration() };
    let tls_dir = bench.work.join("swarm-tls");
    std::fs::create_dir_all(&tls_dir).expect("create the certificate folder");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("make a certificate");
    let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
    let files = vec![("echo.wasm".to_owned(), bench.agent("echo"))];
    let a_dirs = HostDirs::create(&bench.work, "swarm-a", &swarm_policy(&cert, &key, free_port()), &files);
    let b_dirs = HostDirs::create(&bench.work, "swarm-b", &swarm_policy(&cert, &key, free_port()), &[]);
    let (a, b) = (Corral::start(&bench.opts.corral, &a_dirs), Corral::start(&bench.opts.corral, &b_dirs));

    let client = reqwest::Client::new();
    let (swarm, idb) = bench.load.block_on(async {
        let created = call(&client, &a, reqwest::Method::POST, "/v1/swarms", json!({ "name": "bench" })).await;
        let swarm = created["swarm_id"].as_str().expect("a swarm id").to_owned();
        let invite = call(&client, &a, reqwest::Method::POST, &format!("/v1/swarms/{swarm}/invites"), json!({})).await;
        call(&client, &b, reqwest::Method::POST, "/v1/swarms/join", json!({ "invite": invite["url"] })).await;
        let info = call(&client, &b, reqwest::Method::GET, "/v1/swarm/identity", Value::Null).await;
        // A learns nothing new from B's join (it admitted B): ready once B is a member on A.
        (swarm, info["agent_id"].as_str().expect("B's agent id").to_owned())
    });

    eprintln!("jobs on the sending host: {connections} connections");
    let jobs = bench.load.run(&Request::post(a.addr, SUBMIT_AND_WAIT, ECHO_JOB), COMPLETED, connections, plan);
    check(report, "echo jobs", &jobs);

    eprintln!("signed messages A → B: {connections} connections to A's API, same plan");
    let body = json!({ "recipient": idb, "content": "bench" }).to_string();
    let window_start = now_ms() + i64::try_from(bench.warmup().as_millis()).unwrap_or(0);
    let sent = bench.load.run(
        &Request::post(a.addr, &format!("/v1/swarms/{swarm}/messages"), &body),
        QUEUED,
        connections,
        plan,
    );
    let window_end = now_ms();
    check(report, "messages queued on A", &sent);

    let b_db = rusqlite::Connection::open_with_flags(
        b_dirs.data.join("corral.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open B's database");
    let a_db = rusqlite::Connection::open_with_flags(
        a_dirs.data.join("corral.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open A's database");
    // Let the outbox drain, bounded; then everything A accepted must be on B.
    let started = std::time::Instant::now();
    let left = loop {
        let left: i64 = a_db.query_row("SELECT count(*) FROM swarm_outbox", [], |r| r.get(0)).unwrap_or(-1);
        if left == 0 || started.elapsed() > Duration::from_secs(120) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if left != 0 {
        report.problem(format!("swarm: {left} messages still in A's outbox 120 s after the run"));
    }
    let received: i64 = b_db.query_row("SELECT count(*) FROM swarm_inbox", [], |r| r.get(0)).unwrap_or(0);
    if u64::try_from(received).unwrap_or(0) < sent.ok {
        report.problem(format!("swarm: B has {received} messages, fewer than the {} A accepted", sent.ok));
    }
    let in_window: i64 = b_db
        .query_row(
            "SELECT count(*) FROM swarm_inbox WHERE received_at >= ?1 AND received_at < ?2",
            [window_start, window_end],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let secs = (window_end - window_start) as f64 / 1000.0;
    let per_sec = in_window as f64 / secs;
    eprintln!(
        "  {in_window} messages verified and recorded on B in the {secs:.1} s window = {per_sec:.0}/s \
         ({received} received in all, warm-up included; A's sends answered {:.0}/s; jobs {:.0}/s)",
        sent.per_sec(),
        jobs.per_sec()
    );
    a.stop();
    b.stop();
    report.push(Figure::new("swarm_signed_messages_per_sec", per_sec, "msgs/s").baseline(jobs.per_sec()));
}
