//! Figure 8, the message plane: durable routed messages per second, each committed RECEIVED
//! before its producer is answered, delivered to a fresh `greeter` instance (which counts it
//! in kv), and FULFILLED with its whole stage history — side by side with the job throughput
//! of the same host in the same run. Then RECEIVED→FULFILLED latency of messages sent one at a
//! time, from the stage history's timestamps (milliseconds).
//!
//! The producers are HTTP clients (`POST /v1/messages`, 32 connections). What counts is the
//! consumer side: messages that reached FULFILLED during the measured window, by their stored
//! `finished_at`, so a backlog the consumer has not worked off does not count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host::Corral;
use crate::load::{Expect, Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, SUBMIT_AND_WAIT, check};

const MESSAGE: &str = r#"{"recipient":{"agent":"greeter"},"payload":{"name":"bench"}}"#;
const ACCEPTED: Expect = Expect { status: &[202], contains: Some(r#""stage":"RECEIVED""#) };

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

pub fn run(bench: &Bench, report: &mut Report) {
    let connections = bench.opts.connections();
    let plan = Plan::Timed { warmup: bench.warmup(), measure: bench.opts.duration() };
    // The bench policy with the SW4RM gRPC listener on too (for `grpc_send`).
    let policy = crate::host::policy(None).replacen("[server]\n", "[server]\ngrpc_listen = \"127.0.0.1:0\"\n", 1);
    let files: Vec<(String, Vec<u8>)> =
        ["echo", "greeter"].iter().map(|a| (format!("{a}.wasm"), bench.agent(a))).collect();
    let dirs = crate::host::HostDirs::create(&bench.work, "messages", &policy, &files);
    let corral = Corral::start(&bench.opts.corral, &dirs);

    eprintln!("jobs on the same host: {connections} connections");
    let jobs = bench.load.run(&Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB), COMPLETED, connections, plan);
    check(report, "echo jobs", &jobs);

    eprintln!("messages: {connections} producer connections, same plan");
    let started = now_ms();
    let window_start = started + i64::try_from(plan_warmup(plan).as_millis()).unwrap_or(0);
    let sent = bench.load.run(&Request::post(corral.addr, "/v1/messages", MESSAGE), ACCEPTED, connections, plan);
    let window_end = now_ms();
    check(report, "messages sent", &sent);
    let db =
        rusqlite::Connection::open_with_flags(dirs.data.join("corral.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the host's database");
    let fulfilled_in_window: i64 = db
        .query_row(
            "SELECT count(*) FROM messages WHERE stage = 'FULFILLED' AND finished_at >= ?1 AND finished_at < ?2",
            [window_start, window_end],
            |r| r.get(0),
        )
        .expect("count fulfilled messages");
    let secs = (window_end - window_start) as f64 / 1000.0;
    let per_sec = fulfilled_in_window as f64 / secs;
    // Everything accepted reaches its outcome (the backlog drains): wait for it, bounded.
    let drained = wait_drained(&db, Duration::from_secs(120));
    if let Some(left) = drained {
        report.problem(format!("messages: {left} accepted messages had no outcome 120 s after the run"));
    }
    eprintln!(
        "  {fulfilled_in_window} messages FULFILLED in the {secs:.1} s window = {per_sec:.0}/s (jobs: {:.0}/s)",
        jobs.per_sec()
    );

    eprintln!("latency: 2000 messages sent one at a time");
    let sequential_start = now_ms();
    let sequential = bench.load.run(
        &Request::post(corral.addr, "/v1/messages", MESSAGE),
        ACCEPTED,
        1,
        Plan::Counted { warmup: 200, measured: if bench.opts.quick { 500 } else { 2000 } },
    );
    check(report, "sequential messages", &sequential);
    let _ = wait_drained(&db, Duration::from_secs(30));
    let (p50, p99) = received_to_fulfilled(&db, sequential_start);
    eprintln!(
        "  RECEIVED→FULFILLED p50 {p50:.1} ms, p99 {p99:.1} ms (send answered after RECEIVED: p50 {:.0} µs)",
        sequential.quantile_us(0.5)
    );
    // One external producer, HTTP then gRPC, the same concurrency and plan: sends answered
    // after RECEIVED, each delivered to a fresh greeter and FULFILLED.
    let grpc_addr = corral.grpc.expect("the messages host serves gRPC");
    eprintln!("grpc_send: {connections} concurrent SendMessage calls on one channel, same plan");
    let grpc_start = now_ms() + i64::try_from(plan_warmup(plan).as_millis()).unwrap_or(0);
    let (grpc_sent, grpc_errors) = grpc_load(&bench.load, grpc_addr, connections, plan);
    let grpc_end = now_ms();
    if grpc_errors > 0 {
        report.problem(format!("grpc_send: {grpc_errors} SendMessage calls failed or were refused"));
    }
    let _ = wait_drained(&db, Duration::from_secs(120));
    let grpc_fulfilled: i64 = db
        .query_row(
            "SELECT count(*) FROM messages WHERE stage = 'FULFILLED' AND producer_id = 'bench-grpc' AND finished_at >= ?1 AND finished_at < ?2",
            [grpc_start, grpc_end],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let grpc_secs = (grpc_end - grpc_start) as f64 / 1000.0;
    let grpc_per_sec = grpc_sent as f64 / grpc_secs;
    eprintln!(
        "  gRPC: {grpc_sent} sent = {grpc_per_sec:.0}/s, {grpc_fulfilled} FULFILLED in the window = {:.0}/s (HTTP sends: {:.0}/s)",
        grpc_fulfilled as f64 / grpc_secs,
        sent.per_sec()
    );
    corral.stop();

    report.push(Figure::new("routed_messages_per_sec", per_sec, "msgs/s").baseline(jobs.per_sec()).at_least(20_000.0));
    report.push(Figure::new("grpc_send_per_sec", grpc_per_sec, "msgs/s").baseline(sent.per_sec()));
    report.push(Figure::new("message_received_to_fulfilled_p50", p50, "ms"));
    report.push(Figure::new("message_received_to_fulfilled_p99", p99, "ms"));
    report.push(Figure::new("message_send_p50", sequential.quantile_us(0.5), "us"));
}

/// Drives `SendMessage` with `concurrency` calls in flight on one HTTP/2 channel for `plan`;
/// returns the accepted sends that completed in the measured window, and the failures.
fn grpc_load(load: &crate::load::Load, addr: std::net::SocketAddr, concurrency: usize, plan: Plan) -> (u64, u64) {
    use corral::sw4rm::proto::common::Envelope;
    use corral::sw4rm::proto::router::SendMessageRequest;
    use corral::sw4rm::proto::router::router_service_client::RouterServiceClient;
    let Plan::Timed { warmup, measure } = plan else { return (0, 0) };
    load.block_on(async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("gRPC address")
            .connect()
            .await
            .expect("connect to corral's gRPC listener");
        let start = std::time::Instant::now();
        let (window_start, window_end) = (start + warmup, start + warmup + measure);
        let tasks: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let mut client = RouterServiceClient::new(channel.clone());
                tokio::spawn(async move {
                    let (mut ok, mut errors) = (0u64, 0u64);
                    let payload = br#"{"to":"greeter","name":"bench"}"#.to_vec();
                    while std::time::Instant::now() < window_end {
                        let envelope = Envelope {
                            producer_id: "bench-grpc".into(),
                            message_type: 2,
                            content_type: "application/json".into(),
                            content_length: payload.len() as u64,
                            payload: payload.clone(),
                            ..Envelope::default()
                        };
                        let answer = client.send_message(SendMessageRequest { msg: Some(envelope) }).await;
                        let done = std::time::Instant::now();
                        match answer {
                            Ok(r) if r.get_ref().accepted => {
                                if done >= window_start && done < window_end {
                                    ok += 1;
                                }
                            }
                            _ => errors += 1,
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        let mut totals = (0, 0);
        for task in tasks {
            let (ok, errors) = task.await.unwrap_or((0, 1));
            totals.0 += ok;
            totals.1 += errors;
        }
        totals
    })
}

fn plan_warmup(plan: Plan) -> Duration {
    match plan {
        Plan::Timed { warmup, .. } => warmup,
        Plan::Counted { .. } => Duration::ZERO,
    }
}

/// Waits until no message lacks an outcome; `Some(n)` if `n` still do at the timeout.
fn wait_drained(db: &rusqlite::Connection, timeout: Duration) -> Option<i64> {
    let started = std::time::Instant::now();
    loop {
        let open: i64 =
            db.query_row("SELECT count(*) FROM messages WHERE finished_at IS NULL", [], |r| r.get(0)).unwrap_or(-1);
        if open == 0 {
            return None;
        }
        if started.elapsed() > timeout {
            return Some(open);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// p50 and p99 of FULFILLED.at − RECEIVED.at over messages created since `since`.
fn received_to_fulfilled(db: &rusqlite::Connection, since: i64) -> (f64, f64) {
    let mut stmt = db
        .prepare(
            "SELECT f.at - r.at FROM messages m \
             JOIN message_stages r ON r.message_id = m.id AND r.stage = 'RECEIVED' AND r.seq = 1 \
             JOIN message_stages f ON f.message_id = m.id AND f.stage = 'FULFILLED' \
             WHERE m.created_at >= ?1",
        )
        .expect("latency query");
    let mut times: Vec<i64> =
        stmt.query_map([since], |r| r.get(0)).expect("latencies").filter_map(Result::ok).collect();
    times.sort_unstable();
    let at = |q: f64| {
        times.get(((times.len().saturating_sub(1)) as f64 * q).round() as usize).map_or(f64::NAN, |&t| t as f64)
    };
    (at(0.5), at(0.99))
}
