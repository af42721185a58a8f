//! Figure 5: memory per live instance. Jobs of the `fetch` agent are pointed at a park server
//! that holds every request, so each job stays alive inside the host's `http.fetch` call; with
//! all of them parked, the host's RSS minus its idle RSS, per job, is what an instance (its
//! store, linear memory, stacks, the job's bookkeeping and its outbound connection) costs.
//! Then they are released and every one of them must complete.

use std::time::{Duration, Instant};

use crate::host::Corral;
use crate::load::{Expect, Plan, Request};
use crate::park::ParkServer;
use crate::report::{Figure, Report};
use crate::{Bench, MIB, check};

/// File descriptors each side needs beyond one per parked job (listeners, SQLite, pipes, …).
const FD_HEADROOM: u64 = 512;
/// Give up waiting when no new request was parked for this long.
const STALL: Duration = Duration::from_secs(60);

pub fn run(bench: &Bench, report: &mut Report) {
    let wanted: u64 = if bench.opts.quick { 1_000 } else { 10_000 };
    let count = if bench.nofile < wanted + FD_HEADROOM {
        let scaled = bench.nofile.saturating_sub(FD_HEADROOM).max(1);
        eprintln!(
            "  WARNING: open-files limit {} is too low for {wanted} parked jobs (each holds a socket in corral \
             and in the bench); scaling down to {scaled}",
            bench.nofile
        );
        scaled
    } else {
        wanted
    };

    let park = ParkServer::start();
    let corral = Corral::start(&bench.opts.corral, &bench.host_dirs("live", Some(park.addr.port()), &["fetch"]));
    corral.wait_healthy(&bench.load);
    let idle = corral.rss_bytes() as f64;
    eprintln!("idle RSS {:.1} MB; submitting {count} fetch jobs to {}/park", idle / MIB, park.addr);
    for (what, bytes) in corral.rss_breakdown() {
        eprintln!("    {what}: {:.1} MB", bytes as f64 / MIB);
    }

    let body = format!(r#"{{"agent":"fetch","input":{{"url":"http://{}/park"}}}}"#, park.addr);
    let accepted = Expect { status: &[202], contains: None };
    let submitted = bench.load.run(
        &Request::post(corral.addr, "/v1/jobs", &body),
        accepted,
        bench.opts.connections(),
        Plan::Counted { warmup: 0, measured: count },
    );
    check(report, "fetch job submissions", &submitted);

    let target = usize::try_from(submitted.ok).unwrap_or(usize::MAX);
    let started = Instant::now();
    let (mut last, mut last_change, mut last_print) = (0, Instant::now(), Instant::now());
    let mut last_ended_check = Instant::now();
    while park.held() < target {
        std::thread::sleep(Duration::from_millis(50));
        let held = park.held();
        if held != last {
            (last, last_change) = (held, Instant::now());
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {held}/{target} parked after {:.0} s", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        // Jobs that ended instead of parking will never arrive: stop waiting for them.
        let ended = if last_ended_check.elapsed() >= Duration::from_secs(2) {
            last_ended_check = Instant::now();
            ["failed", "timed_out", "cancelled"].iter().map(|s| corral.count_jobs(&bench.load, "fetch", s)).sum()
        } else {
            0
        };
        if ended > 0 && held + ended >= target {
            report.problem(format!("{ended} of {target} fetch jobs ended before reaching the park server"));
            sample_failures(bench, &corral);
            break;
        }
        if last_change.elapsed() >= STALL {
            report.problem(format!(
                "only {held} of {target} fetch jobs reached the park server ({} arrived in all); \
                 none more for {} s",
                park.arrived(),
                STALL.as_secs()
            ));
            sample_failures(bench, &corral);
            break;
        }
    }
    let held = park.held();
    let parked = corral.rss_bytes() as f64;
    eprintln!(
        "  {held} jobs parked after {:.1} s: RSS {:.1} MB (idle {:.1} MB)",
        started.elapsed().as_secs_f64(),
        parked / MIB,
        idle / MIB
    );
    for (what, bytes) in corral.rss_breakdown() {
        eprintln!("    {what}: {:.1} MB", bytes as f64 / MIB);
    }
    let live = Figure::new("live_instances_rss", parked / MIB, "MB").baseline(idle / MIB);
    report.push(if held >= 10_000 { live.below(600.0) } else { live.target_note("< 600 at 10k (n/a)") });
    report.push(Figure::new("rss_per_live_instance", (parked - idle) / held.max(1) as f64 / 1024.0, "KB"));

    park.release();
    let released = Instant::now();
    loop {
        let unfinished =
            corral.count_jobs(&bench.load, "fetch", "queued") + corral.count_jobs(&bench.load, "fetch", "running");
        if unfinished == 0 {
            break;
        }
        if released.elapsed() > Duration::from_secs(180) {
            report.problem(format!("{unfinished} fetch jobs still unfinished 180 s after the release"));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let completed = corral.count_jobs(&bench.load, "fetch", "completed");
    eprintln!("  {completed} completed {:.1} s after the release", released.elapsed().as_secs_f64());
    if completed != target {
        let others: Vec<String> = ["failed", "timed_out", "cancelled"]
            .iter()
            .map(|s| format!("{} {s}", corral.count_jobs(&bench.load, "fetch", s)))
            .collect();
        report.problem(format!("{completed} of {target} fetch jobs completed ({})", others.join(", ")));
        sample_failures(bench, &corral);
    }
    corral.stop();
    park.stop();
}

/// Prints one failed fetch job, to say why.
fn sample_failures(bench: &Bench, corral: &Corral) {
    for status in ["failed", "timed_out"] {
        let (_, page) = corral.get_json(&bench.load, &format!("/v1/jobs?status={status}&agent=fetch&limit=1"));
        if let Some(job) = page["jobs"].as_array().and_then(|j| j.first()) {
            eprintln!("  a {status} fetch job: {}", job["error"]);
        }
    }
    eprintln!("  corral log tail:\n{}", corral.log_tail());
}
