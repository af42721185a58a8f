//! Figure 1, `http_invoke_throughput`: jobs per second through `POST /v1/jobs?wait=…` (each
//! one committed, run in a fresh instance and answered with its result) against requests per
//! second of the native echo server, with the same generator, connections and duration. The
//! native server runs first and is stopped before corral starts, so they never compete.

use crate::baseline::EchoServer;
use crate::host::Corral;
use crate::load::{Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, ECHOED, MIB, SUBMIT_AND_WAIT, check};

pub fn run(bench: &Bench, report: &mut Report) {
    let connections = bench.opts.connections();
    let plan = Plan::Timed { warmup: bench.warmup(), measure: bench.opts.duration() };

    eprintln!(
        "native echo: {connections} connections, {:?} warm-up, {:?} measured",
        bench.warmup(),
        bench.opts.duration()
    );
    let native = EchoServer::start();
    let native_run = bench.load.run(&Request::post(native.addr, "/echo", ECHO_JOB), ECHOED, connections, plan);
    native.stop();
    check(report, "native echo", &native_run);

    eprintln!("corral: {connections} connections, same plan");
    let corral = Corral::start(&bench.opts.corral, &bench.host_dirs("throughput", None, &["echo"]));
    let corral_run =
        bench.load.run(&Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB), COMPLETED, connections, plan);
    check(report, "corral echo jobs", &corral_run);
    eprintln!("  corral RSS after the run: {:.1} MB", corral.rss_bytes() as f64 / MIB);
    corral.stop();

    report.push(
        Figure::new("http_invoke_throughput", corral_run.per_sec(), "jobs/s")
            .baseline(native_run.per_sec())
            .ratio_at_least(0.30),
    );
}
