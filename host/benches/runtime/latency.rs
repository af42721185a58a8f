//! Figure 2: the latency of one job at a time — `invoke_latency_p50` / `_p99` over one
//! connection, sequential requests, against the native echo server's — and
//! `disk_fsync_p50`, the floor any design that commits before it replies pays per request.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::baseline::EchoServer;
use crate::host::Corral;
use crate::load::{Plan, Request};
use crate::report::{Figure, Report};
use crate::{Bench, COMPLETED, ECHO_JOB, ECHOED, SUBMIT_AND_WAIT, check};

const WARMUP: u64 = 200;
const FSYNCS: usize = 1000;

pub fn run(bench: &Bench, report: &mut Report) {
    let measured = if bench.opts.quick { 500 } else { 5000 };
    let plan = Plan::Counted { warmup: WARMUP, measured };

    eprintln!("native echo: 1 connection, {WARMUP} warm-up + {measured} sequential requests");
    let native = EchoServer::start();
    let native_run = bench.load.run(&Request::post(native.addr, "/echo", ECHO_JOB), ECHOED, 1, plan);
    native.stop();
    check(report, "native echo, sequential", &native_run);

    eprintln!("corral: 1 connection, {WARMUP} warm-up + {measured} sequential jobs");
    let corral = Corral::start(&bench.opts.corral, &bench.host_dirs("latency", None, &["echo"]));
    let corral_run = bench.load.run(&Request::post(corral.addr, SUBMIT_AND_WAIT, ECHO_JOB), COMPLETED, 1, plan);
    check(report, "corral echo jobs, sequential", &corral_run);
    corral.stop();

    report.push(
        Figure::new("invoke_latency_p50", corral_run.quantile_us(0.5), "us")
            .baseline(native_run.quantile_us(0.5))
            .at_most(200.0),
    );
    report.push(
        Figure::new("invoke_latency_p99", corral_run.quantile_us(0.99), "us").baseline(native_run.quantile_us(0.99)),
    );

    eprintln!("disk: {FSYNCS} × (4 KiB write into a preallocated 4 MiB file + fdatasync) in {}", bench.work.display());
    let (p50, p99) = fsync_quantiles(&bench.work);
    eprintln!("  fsync p50 {p50:.0} µs, p99 {p99:.0} µs");
    report.push(Figure::new("disk_fsync_p50", p50, "us"));
}

/// p50 and p99 of a 4 KiB in-place write + `sync_data`, in microseconds.
fn fsync_quantiles(dir: &Path) -> (f64, f64) {
    const SIZE: u64 = 4 << 20;
    const BLOCK: usize = 4096;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the fsync probe file");
    file.write_all_at(&vec![0u8; SIZE as usize], 0).expect("preallocate the probe file");
    file.sync_all().expect("sync the probe file");
    let block = [0xa5u8; BLOCK];
    let mut samples: Vec<Duration> = (0..FSYNCS)
        .map(|i| {
            let offset = (i as u64 * BLOCK as u64) % SIZE;
            let started = Instant::now();
            file.write_all_at(&block, offset).expect("write to the probe file");
            file.sync_data().expect("fdatasync the probe file");
            started.elapsed()
        })
        .collect();
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}
