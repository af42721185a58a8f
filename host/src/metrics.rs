//! What the host is doing, for Prometheus: `GET /metrics` in the text exposition format.
//!
//! One process-wide set of metrics (prometheus-client), updated where things happen — a job
//! finishing (`jobs::runner`), a lease decision (`capabilities`), a store commit (the
//! writer) — and gauges read at scrape time (running and queued jobs, loaded agents, store
//! size). Labels are bounded: agent names come from the agents folder, statuses and scopes
//! are fixed sets; no job id, principal or target is ever a label.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub agent: String,
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub scope: String,
    pub decision: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn job_seconds_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs_finished: Family<JobLabels, Counter>,
    job_seconds: HistogramFamily<AgentLabel>,
    lease_decisions: Family<DecisionLabels, Counter>,
    commit_seconds: Histogram,
    batch_ops: Histogram,
    jobs_running: Gauge,
    jobs_queued: Gauge,
    agents_loaded: Gauge,
    store_bytes: Gauge,
    pruned_jobs: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Off only when the operator turned metrics off (`server.metrics = false`): then nothing is
/// counted (what the benchmark's metrics-cost figure compares against).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for the process (at start).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The host's metrics, if they are being recorded.
pub fn recording() -> Option<&'static Metrics> {
    ENABLED.load(Ordering::Relaxed).then(|| &*METRICS)
}

/// What the scrape-time gauges read.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub jobs_running: usize,
    pub jobs_queued: usize,
    pub agents_loaded: usize,
    pub store_bytes: u64,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corral");
        let jobs_finished = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a terminal state, by agent and status",
            jobs_finished.clone(),
        );
        let job_seconds: HistogramFamily<AgentLabel> = Family::new_with_constructor(job_seconds_histogram);
        registry.register("job_duration_seconds", "Submit to finish, per job, by agent", job_seconds.clone());
        let lease_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "lease_decisions",
            "Host calls checked against a lease, by scope and decision",
            lease_decisions.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "store_commit_seconds",
            "Time the store's writer takes per batch commit",
            commit_seconds.clone(),
        );
        let batch_ops = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register("store_batch_ops", "Writes committed together in one batch", batch_ops.clone());
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs running now (each a live Wasm instance)", jobs_running.clone());
        let jobs_queued = Gauge::default();
        registry.register(
            "jobs_queued",
            "Client jobs waiting for a slot (bounded by server.max_queued_jobs)",
            jobs_queued.clone(),
        );
        let agents_loaded = Gauge::default();
        registry.register("agents_loaded", "Agent versions loaded from the agents folder", agents_loaded.clone());
        let store_bytes = Gauge::default();
        registry.register("store_bytes", "Size of the database and its write-ahead log on disk", store_bytes.clone());
        let pruned_jobs = Counter::default();
        registry.register(
            "pruned_jobs",
            "Finished jobs deleted by retention (with their events and audit rows)",
            pruned_jobs.clone(),
        );
        Metrics {
            registry,
            jobs_finished,
            job_seconds,
            lease_decisions,
            commit_seconds,
            batch_ops,
            jobs_running,
            jobs_queued,
            agents_loaded,
            store_bytes,
            pruned_jobs,
        }
    }

    /// Retention deleted `n` finished jobs.
    pub fn jobs_pruned(&self, n: usize) {
        self.pruned_jobs.inc_by(n as u64);
    }

    /// A job ended as `status` after `elapsed` since it was submitted.
    pub fn job_finished(&self, agent: &str, status: &str, elapsed: Duration) {
        let agent = agent.to_owned();
        self.jobs_finished.get_or_create(&JobLabels { agent: agent.clone(), status: status.to_owned() }).inc();
        self.job_seconds.get_or_create(&AgentLabel { agent }).observe(elapsed.as_secs_f64());
    }

    /// A lease check allowed or denied a call in `scope`.
    pub fn lease_decision(&self, scope: &str, allowed: bool) {
        let decision = if allowed { "allow" } else { "deny" };
        self.lease_decisions
            .get_or_create(&DecisionLabels { scope: scope.to_owned(), decision: decision.to_owned() })
            .inc();
    }

    /// The writer committed `ops` writes in `took`.
    pub fn store_commit(&self, ops: usize, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // a batch is at most MAX_BATCH ops
        self.batch_ops.observe(ops as f64);
    }

    /// The text exposition, with the gauges set from `now`.
    pub fn render(&self, now: Snapshot) -> String {
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.jobs_running.set(as_gauge(now.jobs_running as u64));
        self.jobs_queued.set(as_gauge(now.jobs_queued as u64));
        self.agents_loaded.set(as_gauge(now.agents_loaded as u64));
        self.store_bytes.set(as_gauge(now.store_bytes));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let m = recording().unwrap();
        m.job_finished("echo", "completed", Duration::from_millis(3));
        m.lease_decision("kv.write", false);
        m.store_commit(4, Duration::from_micros(200));
        let text = m.render(Snapshot { jobs_running: 2, jobs_queued: 1, agents_loaded: 3, store_bytes: 4096 });
        for needle in [
            r#"corral_jobs_finished_total{agent="echo",status="completed"}"#,
            r#"corral_job_duration_seconds_count{agent="echo"}"#,
            r#"corral_lease_decisions_total{scope="kv.write",decision="deny"}"#,
            "corral_store_commit_seconds_count",
            "corral_jobs_running 2",
            "corral_jobs_queued 1",
            "corral_store_bytes 4096",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
