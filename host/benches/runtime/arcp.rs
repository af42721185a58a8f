//! Figure 9, ARCP over WebSocket: corral against the reference runtime (`arcp-runtime` 2.0.0
//! from the Rust registry, built in its own workspace, `host/benches/arcp-reference/`), same
//! machine, same run, same client. corral runs `echo` as a Wasm component in a fresh sandbox
//! per job with a durable job row and event log (fsync before the result); the reference runs
//! a native Rust `echo` tool in its own process and keeps its event log in in-memory SQLite.
//!
//! The client is this bench's own, over raw frames (tokio-tungstenite): bearer `session.open`,
//! then `tool.invoke`s, counting `job.completed` by `correlation_id`. Throughput: 8 sessions
//! with 8 invokes in flight each (64 in flight), a new invoke as soon as one completes, timed
//! window after a warm-up. Latency: one session, one invoke at a time, invoke sent → its
//! `job.completed` read. Each server runs alone (the other is stopped). Then the same jobs over
//! corral's HTTP API on the same host (`?wait=`, 64 connections, then one), for what the ARCP
//! front door costs over the engine.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::host::Corral;
use crate::load::{Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, SUBMIT_AND_WAIT, check};

const TOKEN: &str = "bench-token";
const SESSIONS: usize = 8;
const IN_FLIGHT_PER_SESSION: usize = 8;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one server did.
#[derive(Debug, Default)]
struct Run {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    failed: u64,
    first_failure: Option<String>,
}

pub fn run(bench: &Bench, report: &mut Report) {
    let reference_bin = &bench.opts.arcp_reference;
    if !reference_bin.is_file() {
        report.problem(format!(
            "arcp: no reference server at {} — build it: cargo build --release --manifest-path \
             host/benches/arcp-reference/Cargo.toml --target-dir target/arcp-reference (./dev bench does)",
            reference_bin.display()
        ));
        return;
    }
    let measured = if bench.opts.quick { 500 } else { 2000 };

    eprintln!("reference (arcp-runtime 2.0.0, native echo tool)");
    let reference = Reference::start(reference_bin);
    let reference_run = measure(bench, &reference.url, measured);
    reference.stop();
    summarize(report, "reference", &reference_run);

    eprintln!("corral (echo.wasm, durable jobs)");
    let policy = format!("{}\n[[principals]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\n", crate::host::policy(None));
    let files = vec![("echo.wasm".to_owned(), bench.agent("echo"))];
    let dirs = crate::host::HostDirs::create(&bench.work, "arcp", &policy, &files);
    let corral = Corral::start(&bench.opts.corral, &dirs);
    let corral_run = measure(bench, &format!("ws://{}/arcp", corral.addr), measured);
    summarize(report, "corral", &corral_run);
    // The same jobs through corral's HTTP front door on the same host: what the ARCP codec
    // and its event streaming cost over the engine.
    let in_flight = SESSIONS * IN_FLIGHT_PER_SESSION;
    let plan = Plan::Timed { warmup: bench.warmup(), measure: bench.opts.duration() };
    let http = bench.load.run(
        &Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB).with_bearer(TOKEN),
        COMPLETED,
        in_flight,
        plan,
    );
    check(report, "corral HTTP jobs, 64 connections", &http);
    let http_sequential = bench.load.run(
        &Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB).with_bearer(TOKEN),
        COMPLETED,
        1,
        Plan::Counted { warmup: 200, measured: measured as u64 },
    );
    check(report, "corral HTTP jobs, sequential", &http_sequential);
    corral.stop();

    report.push(
        Figure::new("arcp_jobs_per_sec_64_in_flight", corral_run.per_sec, "jobs/s")
            .baseline(reference_run.per_sec)
            .ratio_at_least(5.0),
    );
    report.push(
        Figure::new("arcp_sequential_p50", corral_run.p50_us, "us").baseline(reference_run.p50_us).ratio_at_most(0.5),
    );
    report.push(Figure::new("arcp_sequential_p99", corral_run.p99_us, "us").baseline(reference_run.p99_us));
    report.push(Figure::new("arcp_over_http_jobs_per_sec", corral_run.per_sec, "jobs/s").baseline(http.per_sec()));
    report.push(
        Figure::new("arcp_over_http_sequential_p50", corral_run.p50_us, "us")
            .baseline(http_sequential.quantile_us(0.5)),
    );
}

fn summarize(report: &mut Report, who: &str, run: &Run) {
    eprintln!(
        "  {who}: {:.0} jobs/s at {} in flight; sequential p50 {:.0} µs, p99 {:.0} µs",
        run.per_sec,
        SESSIONS * IN_FLIGHT_PER_SESSION,
        run.p50_us,
        run.p99_us
    );
    if run.failed > 0 {
        report.problem(format!(
            "arcp {who}: {} job(s) did not complete; first: {}",
            run.failed,
            run.first_failure.as_deref().unwrap_or("?")
        ));
    }
}

fn measure(bench: &Bench, url: &str, measured: usize) -> Run {
    let warmup = bench.warmup();
    let window = bench.opts.duration();
    bench.load.block_on(async {
        let (per_sec, failed, first_failure) = throughput(url, warmup, window).await;
        let (p50_us, p99_us) = sequential(url, 200, measured).await;
        Run { per_sec, p50_us, p99_us, failed, first_failure }
    })
}

/// Jobs completed per second inside the window, with 64 in flight; and the failures.
async fn throughput(url: &str, warmup: Duration, window: Duration) -> (f64, u64, Option<String>) {
    let started = Instant::now();
    let window_start = started + warmup;
    let stop_at = window_start + window;
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for session in 0..SESSIONS {
        let url = url.to_owned();
        let completed = Arc::clone(&completed);
        tasks.push(tokio::spawn(async move {
            let mut conn = Session::open(&url, session).await;
            let mut sent_at: HashMap<String, Instant> = HashMap::new();
            for _ in 0..IN_FLIGHT_PER_SESSION {
                let id = conn.invoke().await;
                sent_at.insert(id, Instant::now());
            }
            let mut failed = 0u64;
            let mut first_failure = None;
            while !sent_at.is_empty() {
                let Some((correlation, outcome)) = conn.next_terminal().await else {
                    failed += sent_at.len() as u64;
                    first_failure.get_or_insert_with(|| "the connection closed".to_owned());
                    break;
                };
                if sent_at.remove(&correlation).is_none() {
                    continue;
                }
                let now = Instant::now();
                match outcome {
                    Ok(()) if now >= window_start && now < stop_at => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert(e);
                    }
                }
                if now < stop_at {
                    let id = conn.invoke().await;
                    sent_at.insert(id, Instant::now());
                }
            }
            (failed, first_failure)
        }));
    }
    let mut failed = 0;
    let mut first_failure = None;
    for task in tasks {
        let (f, first) = task.await.expect("an ARCP session task");
        failed += f;
        if first_failure.is_none() {
            first_failure = first;
        }
    }
    let per_sec = completed.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
    (per_sec, failed, first_failure)
}

/// p50 and p99 in µs of one invoke at a time, invoke sent → `job.completed` read.
async fn sequential(url: &str, warmup: usize, measured: usize) -> (f64, f64) {
    let mut conn = Session::open(url, SESSIONS).await;
    let mut samples = Vec::with_capacity(measured);
    for n in 0..warmup + measured {
        let started = Instant::now();
        let id = conn.invoke().await;
        loop {
            let (correlation, outcome) = conn.next_terminal().await.expect("the connection stays open");
            if correlation == id {
                outcome.unwrap_or_else(|e| panic!("a sequential job failed: {e}"));
                break;
            }
        }
        if n >= warmup {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99))
}

/// One ARCP session over raw frames.
struct Session {
    socket: Socket,
    session_id: String,
    prefix: String,
    next: u64,
}

impl Session {
    async fn open(url: &str, n: usize) -> Session {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let open = json!({
            "arcp": "1.1", "id": format!("msg_open{n}"), "timestamp": now(), "type": "session.open",
            "payload": {"auth": {"scheme": "bearer", "token": TOKEN}, "client": {"kind": "corral-bench", "version": "1"}, "capabilities": {}},
        });
        socket.send(Message::Text(open.to_string().into())).await.expect("send session.open");
        loop {
            let envelope = read(&mut socket).await.expect("an answer to session.open");
            match envelope["type"].as_str() {
                Some("session.accepted") => {
                    let session_id = envelope["payload"]["session_id"].as_str().expect("a session id").to_owned();
                    return Session { socket, session_id, prefix: format!("msg_b{n}x"), next: 0 };
                }
                Some("session.rejected") => panic!("{url} rejected the session: {envelope}"),
                _ => continue,
            }
        }
    }

    /// Sends one `tool.invoke` of `echo`; its id.
    async fn invoke(&mut self) -> String {
        self.next += 1;
        let id = format!("{}{}", self.prefix, self.next);
        let invoke = json!({
            "arcp": "1.1", "id": id, "timestamp": now(), "session_id": self.session_id, "type": "tool.invoke",
            "payload": {"tool": "echo", "arguments": {"n": 1}},
        });
        self.socket.send(Message::Text(invoke.to_string().into())).await.expect("send tool.invoke");
        id
    }

    /// The next terminal job envelope: its `correlation_id` and whether it completed.
    async fn next_terminal(&mut self) -> Option<(String, Result<(), String>)> {
        loop {
            let envelope = read(&mut self.socket).await?;
            let outcome = match envelope["type"].as_str() {
                Some("job.completed") if envelope["payload"]["value"]["echo"]["n"] == 1 => Ok(()),
                Some("job.completed") => Err(format!("unexpected value: {}", envelope["payload"])),
                Some("job.failed" | "job.cancelled" | "nack") => Err(envelope["payload"].to_string()),
                _ => continue,
            };
            let correlation = envelope["correlation_id"].as_str().unwrap_or_default().to_owned();
            return Some((correlation, outcome));
        }
    }
}

async fn read(socket: &mut Socket) -> Option<Value> {
    loop {
        match socket.next().await?.ok()? {
            Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The reference server process.
struct Reference {
    child: Child,
    url: String,
}

impl Reference {
    fn start(bin: &Path) -> Reference {
        let mut child = Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let line = lines.next().and_then(Result::ok).expect("the reference server's listening line");
        let addr = line.strip_prefix("listening on ").expect("listening on ws://ADDR").trim().to_owned();
        // Keep draining its stdout so the pipe never fills.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Reference { child, url: format!("{addr}/arcp") }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
