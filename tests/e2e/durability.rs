//! Nothing accepted is lost: after `kill -9` and a restart on the same data folder, every job
//! the host accepted reaches a terminal state as the recovery policy documents (queued → run;
//! running → re-run while attempts remain, else `interrupted`; delegated children →
//! `parent_interrupted`), finished results stay readable, and event streams stay gapless.

use serde_json::{Value, json};

use crate::harness::{Host, of_kind, spin_policy, sse_events};

const ONE_SLOT: &str = "[server]\nmax_concurrent_jobs = 1\n";

/// Event seqs of a job as stored in SQLite.
fn stored_seqs(host: &Host, job: &str) -> Vec<i64> {
    let db = host.db();
    let mut stmt = db.prepare("SELECT seq FROM events WHERE job_id = ?1 ORDER BY seq").unwrap();
    stmt.query_map([job], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

async fn assert_gapless(host: &Host, id: &str) {
    let events = host.events(id).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "SSE seqs of {id} are 1..=n: {events:?}");
    let stored = stored_seqs(host, id);
    let expected: Vec<i64> = (1..=stored.len() as i64).collect();
    assert_eq!(stored, expected, "stored seqs of {id} are 1..=n");
    assert_eq!(stored.len(), seqs.len(), "SSE and the store agree on {id}");
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "state", "{id} ends with its terminal state: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_accepted_before_kill_9_are_finished_after_restart() {
    let mut host = Host::start_with_policy(&["spin", "counter"], Some(&spin_policy(ONE_SLOT)));

    let done = host.run("counter", json!({"key": "k"}), None).await;
    assert_eq!(done["status"], "completed", "{done}");
    let done_id = done["id"].as_str().unwrap().to_string();

    let spin_lease = Some(json!({"limits": {"deadline_ms": 1500}}));
    // Long enough that the jobs behind it are still queued at the kill.
    let running = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 5000}}))).await;
    host.wait_status(&running, "running").await;
    let mut queued = Vec::new();
    queued.push(host.submit("counter", json!({"key": "k"}), None).await);
    queued.push(host.submit("spin", json!(null), spin_lease).await);
    queued.push(host.submit("counter", json!({"key": "k"}), None).await);
    queued.push(host.submit("counter", json!({"key": "k"}), None).await);
    for id in &queued {
        assert_eq!(host.job(id).await["status"], "queued", "{id} is waiting for the only slot");
    }

    let first_pid = host.pid();
    host.kill_9();
    host.spawn();
    assert_ne!(host.pid(), first_pid, "a new process serves the same data folder");

    // Running on attempt 1 of recovery.max_attempts = 2: re-run, and the spin hits its deadline.
    let rerun = host.wait_done(&running).await;
    assert_eq!(rerun["status"], "timed_out", "{rerun}");
    assert_eq!(rerun["attempt"], 2, "{rerun}");
    let mut completed_counters = 1;
    for id in &queued {
        let job = host.wait_done(id).await;
        match job["agent"].as_str().unwrap() {
            "counter" => {
                assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
                assert_eq!(job["attempt"], 1, "{job}");
                completed_counters += 1;
            }
            _ => assert_eq!(job["status"], "timed_out", "{job}"),
        }
    }

    let before = host.job(&done_id).await;
    assert_eq!(before["status"], "completed");
    assert_eq!(before["output"], json!({"key": "k", "value": 1}));

    let now = host.run("counter", json!({"key": "k", "by": 0}), None).await;
    let value = now["output"]["value"].as_i64().unwrap();
    assert!(value >= completed_counters, "counter k = {value}, but {completed_counters} counter jobs completed");

    for id in std::iter::once(&done_id).chain(std::iter::once(&running)).chain(&queued) {
        assert_gapless(&host, id).await;
    }
    let states: Vec<Value> = of_kind(&host.events(&running).await, "state").into_iter().cloned().collect();
    let statuses: Vec<&str> = states.iter().map(|s| s["data"]["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["queued", "running", "queued", "running", "timed_out"],
        "the re-run is visible in the stream: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_running_at_two_kills_fails_as_interrupted_when_attempts_run_out() {
    let mut host = Host::start_with_policy(&["spin"], Some(&spin_policy("[recovery]\nmax_attempts = 2\n")));
    let id = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    let job = host.wait_status(&id, "running").await;
    assert_eq!(job["attempt"], 1);

    host.kill_9();
    host.spawn();
    let job = host.wait_running_attempt(&id, 2).await;
    assert_eq!(job["attempt"], 2);

    host.kill_9();
    host.spawn();
    let job = host.wait_done(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "interrupted", "{job}");
    assert_gapless(&host, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_child_unfinished_at_kill_9_fails_as_parent_interrupted() {
    let mut host = Host::start_with_policy(&["orchestrator", "spin"], Some(&spin_policy("")));
    let (parent, child) = host.orchestrator_with_spinning_child().await;
    let child_id = child["id"].as_str().unwrap().to_string();

    host.kill_9();
    host.spawn();

    let child = host.wait_done(&child_id).await;
    assert_eq!(child["status"], "failed", "{child}");
    assert_eq!(child["error"]["code"], "parent_interrupted", "{child}");
    // The parent is re-run and delegates again; stop it.
    let rerun = host.wait_status(&parent, "running").await;
    assert_eq!(rerun["attempt"], 2, "{rerun}");
    let (status, _) = host.post(&format!("/v1/jobs/{parent}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(host.wait_done(&parent).await["status"], "cancelled");
    assert_gapless(&host, &child_id).await;
    assert_gapless(&host, &parent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_results_and_events_survive_a_clean_restart() {
    let mut host = Host::start(&["echo"]);
    let job = host.run("echo", json!({"keep": "me"}), None).await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = host.events(&id).await;
    let status = host.terminate();
    assert!(status.success(), "SIGTERM ends the host cleanly: {status:?}\n{}", host.logs());
    host.spawn();
    let again = host.job(&id).await;
    assert_eq!(again["output"], json!({"echo": {"keep": "me"}}));
    assert_eq!(sse_events(&host.client, &host.url, &id, None, None).await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_of_a_job_killed_mid_flood_stays_gapless() {
    // A flood with a huge host-call budget writes log events as fast as it can until killed.
    let policy = crate::harness::ceiling_with_limits(&[], crate::harness::BIG_FUEL, 1_000_000_000);
    let mut host = Host::start_with_policy(&["flood"], Some(&policy));
    let id = host.submit("flood", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    crate::harness::eventually("the flood has written a few hundred events", || async {
        (stored_seqs(&host, &id).len() > 300).then_some(())
    })
    .await;

    host.kill_9();
    let at_kill = stored_seqs(&host, &id);
    let expected: Vec<i64> = (1..=at_kill.len() as i64).collect();
    assert_eq!(at_kill, expected, "what survived the kill is a gapless prefix");

    host.spawn();
    let job = host.wait_running_attempt(&id, 2).await;
    assert_eq!(job["attempt"], 2);
    let (status, _) = host.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(host.wait_done(&id).await["status"], "cancelled");
    assert_gapless(&host, &id).await;
    assert!(stored_seqs(&host, &id).len() > at_kill.len(), "the re-run appended after what was there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_still_running_after_the_sigterm_grace_period_is_rerun_after_restart() {
    let mut host =
        Host::start_with_policy(&["spin", "echo"], Some(&spin_policy("[server]\nshutdown_grace_ms = 200\n")));
    let done = host.run("echo", json!("before"), None).await["id"].as_str().unwrap().to_string();
    let id = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    host.wait_status(&id, "running").await;

    let status = host.terminate();
    assert!(status.success(), "{status:?}\n{}", host.logs());
    host.spawn();
    let job = host.wait_running_attempt(&id, 2).await;
    assert_eq!(job["attempt"], 2);
    let (status, _) = host.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(host.wait_done(&id).await["status"], "cancelled");
    assert_eq!(host.job(&done).await["output"], json!({"echo": "before"}));
    assert_gapless(&host, &id).await;
}
