//! Figures of running for a long time, each against a baseline measured side by side:
//!
//! - `metrics_throughput_cost`: echo-job throughput of a host recording Prometheus metrics
//!   against an identical host with `server.metrics = false`, runs alternating between the
//!   two (so drift in the machine hits both), in percent lost. Target < 3 %.
//! - `soak_db_growth` / `soak_rss_growth`: a steady echo load for several segments on a host
//!   with a short retention (10 s), against the same load on a host that keeps every job; the
//!   figure is how much the database (with its WAL) and the RSS grew over the second half of
//!   the run, when retention has reached its steady state. Flat is the target (< 16 MB).
//!   `soak_throughput` is that run's jobs/s against the keep-everything run's: at saturation
//!   the writer deletes as many rows as it inserts.

use std::path::Path;
use std::time::Duration;

use crate::host::Corral;
use crate::load::{Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, MIB, SUBMIT_AND_WAIT, check};

pub fn run(bench: &Bench, report: &mut Report) {
    metrics_cost(bench, report);
    soak(bench, report);
}

/// The bench policy with `server` keys added and extra tables appended.
fn policy(server: &str, extra: &str) -> String {
    let base = crate::host::policy(None).replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
    format!("{base}\n{extra}\n")
}

fn host(bench: &Bench, name: &str, policy: &str) -> (Corral, std::path::PathBuf) {
    let agents = [("echo.wasm".to_owned(), bench.agent("echo"))];
    let dirs = crate::host::HostDirs::create(&bench.work, name, policy, &agents);
    (Corral::start(&bench.opts.corral, &dirs), dirs.data)
}

fn metrics_cost(bench: &Bench, report: &mut Report) {
    let connections = bench.opts.connections();
    let rounds = if bench.opts.quick { 2 } else { 3 };
    let plan = Plan::Timed { warmup: bench.warmup(), measure: bench.opts.duration() };
    let (on, _) = host(bench, "metrics-on", &policy("metrics = true", ""));
    let (off, _) = host(bench, "metrics-off", &policy("metrics = false", ""));
    let (mut on_jobs, mut off_jobs) = (0.0, 0.0);
    for round in 1..=rounds {
        for (label, corral, total) in [("off", &off, &mut off_jobs), ("on", &on, &mut on_jobs)] {
            let run =
                bench.load.run(&Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB), COMPLETED, connections, plan);
            check(report, &format!("metrics {label}, round {round}"), &run);
            *total += run.per_sec();
        }
    }
    on.stop();
    off.stop();
    let (on_rate, off_rate) = (on_jobs / f64::from(rounds), off_jobs / f64::from(rounds));
    let cost = (1.0 - on_rate / off_rate) * 100.0;
    eprintln!("  metrics on {on_rate:.0} jobs/s, off {off_rate:.0} jobs/s: cost {cost:.1} %");
    report.push(
        Figure::new("metrics_throughput_cost", cost, "%").baseline(off_rate).with_ratio(on_rate / off_rate).below(3.0),
    );
}

/// Bytes of the database and its WAL in `data`.
fn db_bytes(data: &Path) -> u64 {
    let size = |name: &str| std::fs::metadata(data.join(name)).map_or(0, |m| m.len());
    size("corral.db") + size("corral.db-wal")
}

/// (database MB, RSS MB) after each of the steady-load segments, and the jobs/s of the run.
fn steady_load(bench: &Bench, name: &str, retention: &str, report: &mut Report) -> (Vec<(f64, f64)>, f64) {
    let (segments, length): (u32, u64) = if bench.opts.quick { (4, 5) } else { (8, 15) };
    let connections = bench.opts.connections();
    let (corral, data) = host(bench, name, &policy("", &format!("[retention]\n{retention}")));
    let request = Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB);
    let (mut samples, mut jobs) = (Vec::new(), 0.0);
    for segment in 1..=segments {
        let plan = Plan::Timed { warmup: Duration::ZERO, measure: Duration::from_secs(length) };
        let run = bench.load.run(&request, COMPLETED, connections, plan);
        check(report, &format!("{name} segment {segment}"), &run);
        let sample = (db_bytes(&data) as f64 / MIB, corral.rss_bytes() as f64 / MIB);
        eprintln!(
            "  {name} after {} s: db {:.1} MB, RSS {:.1} MB, {:.0} jobs/s",
            u64::from(segment) * length,
            sample.0,
            sample.1,
            run.per_sec()
        );
        samples.push(sample);
        jobs += run.per_sec();
    }
    corral.stop();
    (samples, jobs / f64::from(segments))
}

fn soak(bench: &Bench, report: &mut Report) {
    let (kept, kept_rate) = steady_load(bench, "soak-keep-all", "jobs_ms = 0", report);
    let (pruned, pruned_rate) = steady_load(bench, "soak-retention", "jobs_ms = 10000\ninterval_ms = 1000", report);
    let second_half = |s: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mid = s.get(s.len() / 2 - 1).map_or(0.0, pick);
        s.last().map_or(0.0, pick) - mid
    };
    let db = |s: &(f64, f64)| s.0;
    let rss = |s: &(f64, f64)| s.1;
    report.push(
        Figure::new("soak_db_growth", second_half(&pruned, db), "MB").baseline(second_half(&kept, db)).below(16.0),
    );
    report.push(
        Figure::new("soak_rss_growth", second_half(&pruned, rss), "MB").baseline(second_half(&kept, rss)).below(16.0),
    );
    // Pruning deletes as many rows as the load inserts, on the same writer: not free.
    report.push(Figure::new("soak_throughput", pruned_rate, "jobs/s").baseline(kept_rate));
    if let Some(last) = pruned.last() {
        report.push(Figure::new("soak_db_size", last.0, "MB").baseline(kept.last().map_or(0.0, |k| k.0)));
    }
}
