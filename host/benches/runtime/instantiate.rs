//! Figure 3: instantiate + call of the `echo` agent in process, through the same sandbox setup
//! a job gets (`corral::jobs::probe`): fresh store, memory cap, fuel, epoch deadline, a fresh
//! instance from the agent's `InstancePre`, one call (echo makes one host call, `log`).
//! Baseline: calls on one reused instance — what skipping instantiation would save.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral::config::Policy;
use corral::jobs::probe::Probe;
use corral::server::Runtime;

use crate::report::Figure;

/// The instantiate+call figures (target ≤ 15 µs).
pub fn measure(quick: bool) -> Vec<Figure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tmp = repo.join("target/tmp");
        std::fs::create_dir_all(&tmp).expect("create target/tmp");
        let work = tempfile::Builder::new().prefix("bench-instantiate-").tempdir_in(&tmp).expect("work dir");
        let agents = work.path().join("agents");
        std::fs::create_dir_all(&agents).expect("agents dir");
        std::fs::copy(repo.join("agents/echo.wasm"), agents.join("echo.wasm")).expect("copy echo.wasm (build the agents)");
        let policy = Arc::new(Policy::builtin().expect("built-in policy"));
        let rt = Runtime::open(policy, &agents, &work.path().join("data"), None, None).await.expect("open the runtime");
        let probe = Probe::new(&rt.manager, "echo").expect("resolve echo");
        let input = r#"{"n":1}"#;

        let (warmup, n) = if quick { (1_000, 5_000) } else { (5_000, 50_000) };
        for _ in 0..warmup {
            probe.call_fresh(input).await.expect("call").expect("echo succeeds");
        }
        let mut fresh = Vec::with_capacity(n);
        for _ in 0..n {
            let start = std::time::Instant::now();
            probe.call_fresh(input).await.expect("call").expect("echo succeeds");
            fresh.push(start.elapsed());
        }
        let mut reused = probe.call_reused(input, n / 5).await.expect("reused calls");
        let (fresh_p50, fresh_p99) = (percentile(&mut fresh, 0.50), percentile(&mut fresh, 0.99));
        let reused_p50 = percentile(&mut reused, 0.50);
        eprintln!(
            "  instantiate+call: p50 {fresh_p50:.1} µs, p99 {fresh_p99:.1} µs over {n} calls; reused instance p50 {reused_p50:.2} µs"
        );
        vec![
            Figure::new("instantiate_call_p50", fresh_p50, "us").baseline(reused_p50).at_most(15.0),
            Figure::new("instantiate_call_p99", fresh_p99, "us").baseline(reused_p50),
        ]
    })
}

/// The `q` quantile in microseconds (sorts `times`).
fn percentile(times: &mut [Duration], q: f64) -> f64 {
    times.sort_unstable();
    let last = times.len().saturating_sub(1);
    let idx = ((last as f64) * q).round() as usize;
    times.get(idx.min(last)).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}
