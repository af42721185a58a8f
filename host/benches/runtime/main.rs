//! corral's runtime benchmark: real `corral serve` processes driven over loopback HTTP by an
//! in-process load generator, side by side with a native axum echo server, so every figure
//! comes with the number it should be read against.
//!
//! Each figure is printed as one JSON line on stdout when measured,
//! `{"figure", "value", "unit", "baseline", "ratio"}`, and all of them as a markdown table
//! with their targets at the end. Progress and diagnostics go to stderr. Any failed request
//! or job is a problem: listed at the end, and the exit status is 1.
//!
//! `./dev bench [options]` builds corral and the agents first; or
//! `cargo bench -p corral --bench runtime -- [options]` (see `--help`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // A benchmark binary, not a request path: it aborts loudly on setup failure.

mod arcp;
mod baseline;
mod host;
mod instantiate;
mod latency;
mod leases;
mod live;
mod load;
mod messages;
mod park;
mod report;
mod rss_growth;
mod soak;
mod startup;
mod swarm;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host::HostDirs;
use load::{Expect, Load, Outcome};
use report::Report;

/// The body every echo job is submitted with (and the native baseline echoes).
pub const ECHO_JOB: &str = r#"{"agent":"echo","input":{"n":1}}"#;
/// Submit and wait for the result.
pub const SUBMIT_AND_WAIT: &str = "/v1/jobs?wait=30000";
/// A job that finished within the wait.
pub const COMPLETED: Expect = Expect { status: &[200], contains: Some(r#""status":"completed""#) };
/// The native echo's answer.
pub const ECHOED: Expect = Expect { status: &[200], contains: Some(r#"{"echo":"#) };

pub const MIB: f64 = 1_048_576.0;

/// A group of figures, measured together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Group {
    Throughput,
    Latency,
    Instantiate,
    RssGrowth,
    LiveInstances,
    Startup,
    Leases,
    Messages,
    Arcp,
    Soak,
    Swarm,
}

impl Group {
    const ALL: [Group; 11] = [
        Group::Throughput,
        Group::Latency,
        Group::Instantiate,
        Group::RssGrowth,
        Group::LiveInstances,
        Group::Startup,
        Group::Leases,
        Group::Messages,
        Group::Arcp,
        Group::Soak,
        Group::Swarm,
    ];

    fn name(self) -> &'static str {
        match self {
            Group::Throughput => "throughput",
            Group::Latency => "latency",
            Group::Instantiate => "instantiate",
            Group::RssGrowth => "rss_growth",
            Group::LiveInstances => "live_instances",
            Group::Startup => "startup",
            Group::Leases => "leases",
            Group::Messages => "messages",
            Group::Arcp => "arcp",
            Group::Soak => "soak",
            Group::Swarm => "swarm",
        }
    }
}

/// corral's runtime benchmark (`./dev bench [options]` builds corral and the agents first).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cargo bench -p corral --bench runtime --")]
pub struct Options {
    /// Smoke run: short durations, 50k instead of 1M jobs, 1k instead of 10k instances.
    #[arg(long)]
    pub quick: bool,
    /// Run only these groups.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// Measured seconds of each throughput run (default 10; 3 with --quick).
    #[arg(long = "duration")]
    duration_secs: Option<f64>,
    /// The corral binary to benchmark (default: the one cargo built).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_corral"))]
    pub corral: PathBuf,
    /// The reference ARCP runtime's server for the `arcp` group (built by `./dev bench` from
    /// host/benches/arcp-reference, its own workspace).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/arcp-reference/release/arcp-reference-server"))]
    pub arcp_reference: PathBuf,
    /// Keep the work dir (host logs, databases) under target/tmp.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench` to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Options {
    pub fn connections(&self) -> usize {
        usize::from(self.connections)
    }

    pub fn duration(&self) -> Duration {
        let default = if self.quick { 3.0 } else { 10.0 };
        Duration::try_from_secs_f64(self.duration_secs.unwrap_or(default)).unwrap_or(Duration::from_secs(10))
    }

    fn runs(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }
}

/// What every group gets: options, the load generator and the work dir.
#[derive(Debug)]
pub struct Bench {
    pub opts: Options,
    pub load: Load,
    /// A fresh folder under `<repo>/target/tmp` (the repository's disk, not tmpfs).
    pub work: PathBuf,
    /// A compiled-code cache shared by the hosts whose figures do not measure compilation.
    cache: PathBuf,
    agents_src: PathBuf,
    /// The bench process's open-files limit (its hosts inherit it).
    pub nofile: u64,
}

impl Bench {
    /// The built component `agents/<name>.wasm`.
    pub fn agent(&self, name: &str) -> Vec<u8> {
        let path = self.agents_src.join(format!("{name}.wasm"));
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e} — build the agents (./dev bench does)", path.display()))
    }

    /// Folders for a host with the bench policy and `agents`, sharing the compiled-code cache.
    pub fn host_dirs(&self, name: &str, fetch_port: Option<u16>, agents: &[&str]) -> HostDirs {
        let files: Vec<(String, Vec<u8>)> = agents.iter().map(|a| (format!("{a}.wasm"), self.agent(a))).collect();
        HostDirs::create(&self.work, name, &host::policy(fetch_port), &files).with_cache(&self.cache)
    }

    /// Warm-up before a timed run.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(if self.opts.quick { 1 } else { 2 })
    }
}

/// Prints a run's summary; a run with failed requests is a problem.
pub fn check(report: &mut Report, what: &str, outcome: &Outcome) {
    eprintln!("  {what}: {}", outcome.summary());
    if outcome.errors > 0 {
        report.problem(format!(
            "{what}: {} request(s) failed; first: {}",
            outcome.errors,
            outcome.error_samples.first().map(String::as_str).unwrap_or("?")
        ));
    }
}

fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn main() {
    let opts = <Options as clap::Parser>::parse();
    // Before any host is spawned: they inherit it, and 10k parked jobs need 10k sockets each side.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|e| {
        eprintln!("warning: cannot raise the open-files limit: {e}");
        1024
    });
    let repo = repo();
    let tmp = repo.join("target/tmp");
    std::fs::create_dir_all(&tmp).expect("create target/tmp");
    let work = tempfile::Builder::new().prefix("bench-").tempdir_in(&tmp).expect("create the work dir");
    let cache = work.path().join("shared-cache");
    let bench = Bench {
        load: Load::new(),
        work: work.path().to_path_buf(),
        cache,
        agents_src: repo.join("agents"),
        nofile,
        opts,
    };
    assert!(bench.opts.corral.is_file(), "no corral binary at {}", bench.opts.corral.display());
    eprintln!(
        "corral runtime bench: {} | {} connections, {:?} per timed run{} | work dir {} | open-files limit {}",
        bench.opts.corral.display(),
        bench.opts.connections(),
        bench.opts.duration(),
        if bench.opts.quick { ", quick" } else { "" },
        bench.work.display(),
        bench.nofile
    );

    let mut report = Report::default();
    for group in Group::ALL.into_iter().filter(|g| bench.opts.runs(*g)) {
        eprintln!("\n== {} ==", group.name());
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_group(group, &bench, &mut report)));
        let secs = started.elapsed().as_secs_f64();
        eprintln!("== {} done in {secs:.1} s", group.name());
        report.timing(group.name(), secs);
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            report.problem(format!("group {} aborted: {message}", group.name()));
        }
    }
    report.print_table();

    let failed = !report.problems().is_empty();
    if failed || bench.opts.keep {
        let kept = work.keep();
        eprintln!("work dir kept (host logs, databases): {}", kept.display());
    } else {
        drop(work);
    }
    std::process::exit(i32::from(failed));
}

fn run_group(group: Group, bench: &Bench, report: &mut Report) {
    match group {
        Group::Throughput => throughput::run(bench, report),
        Group::Latency => latency::run(bench, report),
        Group::Instantiate => {
            let figures = instantiate::measure(bench.opts.quick);
            if figures.is_empty() {
                eprintln!("  (no figures: instantiate::measure returned none)");
            }
            for figure in figures {
                report.push(figure);
            }
        }
        Group::RssGrowth => rss_growth::run(bench, report),
        Group::LiveInstances => live::run(bench, report),
        Group::Startup => startup::run(bench, report),
        Group::Leases => leases::measure(bench.opts.quick).into_iter().for_each(|f| report.push(f)),
        Group::Messages => messages::run(bench, report),
        Group::Arcp => arcp::run(bench, report),
        Group::Soak => soak::run(bench, report),
        Group::Swarm => swarm::run(bench, report),
    }
}
