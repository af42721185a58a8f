//! Figure 6: how fast new code becomes usable.
//!
//! - `cold_start_first_job`: a new component renamed into a running host's agents folder,
//!   until the first job of it completes (folder watch, validation, compilation, first run).
//! - `restart_to_ready`: a host with 10 agent versions, from spawn to the first `/healthz` 200,
//!   with its compiled-code cache warm (median of 5), against its first, compiling start.

use std::time::{Duration, Instant};

use crate::host::{Corral, HostDirs, policy};
use crate::load::{Conn, Request};
use crate::report::{Figure, Report};
use crate::{Bench, SUBMIT_AND_WAIT};

const CACHED_STARTS: usize = 5;

pub fn run(bench: &Bench, report: &mut Report) {
    cold_start(bench, report);
    restart(bench, report);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cold_start(bench: &Bench, report: &mut Report) {
    // No shared cache: the new version must be compiled, as it would be on a real host.
    let dirs = HostDirs::create(&bench.work, "cold-start", &policy(None), &[("echo.wasm".into(), bench.agent("echo"))]);
    let corral = Corral::start(&bench.opts.corral, &dirs);
    corral.wait_healthy(&bench.load);

    let staged = dirs.root.join("echo-0.1.7.wasm");
    std::fs::write(&staged, with_version(&bench.agent("echo"), "0.1.0", "0.1.7")).expect("stage the new version");
    let body = r#"{"agent":"echo@0.1.7","input":{"n":1}}"#;
    let request = Request::post(corral.addr, SUBMIT_AND_WAIT, body);
    eprintln!("dropping echo@0.1.7 into a running host's agents folder");
    let result = bench.load.block_on(async {
        let mut conn = Conn::new(corral.addr);
        let dropped = Instant::now();
        std::fs::rename(&staged, dirs.agents.join("echo-0.1.7.wasm")).expect("rename into the agents folder");
        let mut not_yet = 0u32;
        loop {
            match conn.send(&request).await {
                Ok((200, answer)) if String::from_utf8_lossy(&answer).contains(r#""status":"completed""#) => {
                    return Ok((dropped.elapsed(), not_yet));
                }
                Ok((404, _)) if dropped.elapsed() < Duration::from_secs(60) => {
                    not_yet += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok((status, answer)) => return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&answer))),
                Err(e) => return Err(e),
            }
        }
    });
    corral.stop();
    match result {
        Ok((took, not_yet)) => {
            eprintln!("  first job completed {:.1} ms after the rename ({not_yet} × 404 before)", ms(took));
            report.push(Figure::new("cold_start_first_job", ms(took), "ms"));
        }
        Err(e) => report.problem(format!("the first job of a dropped-in component did not complete: {e}")),
    }
}

fn restart(bench: &Bench, report: &mut Report) {
    let echo = bench.agent("echo");
    let counter = bench.agent("counter");
    let mut agents: Vec<(String, Vec<u8>)> =
        ["echo", "counter", "fetch", "orchestrator"].iter().map(|a| (format!("{a}.wasm"), bench.agent(a))).collect();
    for v in ["0.1.1", "0.1.2", "0.1.3"] {
        agents.push((format!("echo-{v}.wasm"), with_version(&echo, "0.1.0", v)));
        agents.push((format!("counter-{v}.wasm"), with_version(&counter, "0.1.0", v)));
    }
    // Its own data dir, so the first start compiles everything into `<data>/compiled`.
    let dirs = HostDirs::create(&bench.work, "restart", &policy(None), &agents);

    let (corral, cold) = start_ready(bench, &dirs);
    let (_, listing) = corral.get_json(&bench.load, "/v1/agents");
    let loaded: usize = listing["agents"]
        .as_array()
        .map(|a| a.iter().map(|agent| agent["versions"].as_array().map_or(0, Vec::len)).sum())
        .unwrap_or(0);
    let rejected = listing["errors"].as_array().map_or(0, Vec::len);
    eprintln!("  first start (compiling {loaded} agent versions): {:.1} ms to /healthz", ms(cold));
    if loaded != agents.len() || rejected > 0 {
        report.problem(format!("{loaded} of {} agent versions loaded, {rejected} rejected: {listing}", agents.len()));
    }
    let stopped = corral.stop();
    eprintln!("  SIGTERM → exit: {:.1} ms", ms(stopped));

    let mut cached: Vec<Duration> = (0..CACHED_STARTS)
        .map(|i| {
            let (corral, took) = start_ready(bench, &dirs);
            let stopped = corral.stop();
            eprintln!("  cached start {}: {:.1} ms to /healthz (stop {:.1} ms)", i + 1, ms(took), ms(stopped));
            took
        })
        .collect();
    cached.sort();
    let median = cached[cached.len() / 2];
    report.push(Figure::new("restart_to_ready", ms(median), "ms").baseline(ms(cold)).below(100.0));
}

/// Starts a host; returns it and the time from spawn to its first `/healthz` 200.
fn start_ready(bench: &Bench, dirs: &HostDirs) -> (Corral, Duration) {
    let corral = Corral::start(&bench.opts.corral, dirs);
    corral.wait_healthy(&bench.load);
    let took = corral.spawned.elapsed();
    eprintln!("    (listening line after {:.1} ms)", ms(corral.listening_after));
    (corral, took)
}

/// The component with its manifest version replaced by one of the same length (every
/// occurrence of `"version":"FROM"`), so its section sizes stay valid: a genuinely new
/// version of the same agent. Same as the e2e harness's `with_version`.
fn with_version(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "versions must have the same length");
    let needle = format!("\"version\":\"{from}\"").into_bytes();
    let replacement = format!("\"version\":\"{to}\"").into_bytes();
    let mut out = bytes.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + needle.len() <= out.len() {
        if out[i..i + needle.len()] == needle[..] {
            out[i..i + needle.len()].copy_from_slice(&replacement);
            found += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(found >= 1, "the component has no {}", String::from_utf8_lossy(&needle));
    out
}
