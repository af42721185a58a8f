//! Figure 4, `rss_growth_1m_jobs`: does memory stay flat under sustained load? A fresh host
//! runs a warm-up batch, then a million echo jobs (50k with `--quick`) at full concurrency;
//! the figure is the RSS after minus the RSS before, in MiB.

use std::time::Duration;

use crate::host::Corral;
use crate::load::{Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, MIB, SUBMIT_AND_WAIT, check};

pub fn run(bench: &Bench, report: &mut Report) {
    let (warmup, jobs) = if bench.opts.quick { (5_000, 50_000) } else { (20_000, 1_000_000) };
    let connections = bench.opts.connections();
    let corral = Corral::start(&bench.opts.corral, &bench.host_dirs("rss-growth", None, &["echo"]));
    let request = Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB);

    eprintln!("warm-up: {warmup} echo jobs over {connections} connections");
    let warm = bench.load.run(&request, COMPLETED, connections, Plan::Counted { warmup: 0, measured: warmup });
    check(report, "warm-up jobs", &warm);
    let before = corral.rss_bytes() as f64 / MIB;

    eprintln!("{jobs} echo jobs over {connections} connections (RSS before: {before:.1} MB)");
    let run = bench.load.run(&request, COMPLETED, connections, Plan::Counted { warmup: 0, measured: jobs });
    check(report, "sustained jobs", &run);
    std::thread::sleep(Duration::from_secs(2));
    let after = corral.rss_bytes() as f64 / MIB;
    eprintln!(
        "  RSS before {before:.1} MB, after {after:.1} MB (+{:.1} MB) over {} jobs at {:.0} jobs/s",
        after - before,
        run.ok,
        run.per_sec()
    );
    corral.stop();

    report.push(
        Figure::new("rss_growth_1m_jobs", after - before, "MB").baseline(before).with_ratio(after / before).below(20.0),
    );
}
