//! Limits are enforced by the engine, not by the agent's good will: a deadline stops a
//! spinning guest, a memory cap stops a hoarding one, a host-call budget stops a flooding
//! one — each job ends with a precise error, and other jobs carry on.

use serde_json::json;

use crate::harness::{Host, spin_policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_agent_is_stopped_at_its_deadline_as_timed_out() {
    let host = Host::start(&["spin"]);
    let job = host.run("spin", json!(null), Some(json!({"limits": {"deadline_ms": 300}}))).await;
    assert_eq!(job["status"], "timed_out", "{job}");
    assert_eq!(job["error"]["code"], "timed_out");
    assert!(job["error"]["message"].as_str().unwrap().contains("300"), "{job}");
    assert_eq!(job["lease"]["limits"]["deadline_ms"], 300);
    assert!(job["finished_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_fails_with_limit_exceeded_naming_memory() {
    let host = Host::start(&["membomb"]);
    let job = host.run("membomb", json!(null), Some(json!({"limits": {"memory_bytes": 16_777_216}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    let message = job["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("memory"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_flood_fails_with_limit_exceeded_naming_host_calls() {
    let host = Host::start(&["flood"]);
    let job = host.run("flood", json!(null), Some(json!({"limits": {"max_host_calls": 500}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    let message = job["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("host-call") || message.contains("host call"), "{message}");
    // The flood was cut off at the budget: at most 500 log events were stored.
    let logs: i64 = host
        .db()
        .query_row(
            "SELECT count(*) FROM events WHERE job_id = ?1 AND kind = 'log'",
            [job["id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(logs <= 500, "{logs} log events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_job_completes_while_hostile_jobs_run() {
    let host = Host::start_with_policy(&["spin", "membomb", "flood", "echo"], Some(&spin_policy("")));
    let spin = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 30000}}))).await;
    let membomb = host.submit("membomb", json!(null), None).await;
    let flood = host.submit("flood", json!(null), None).await;
    host.wait_status(&spin, "running").await;

    let echo = host.run("echo", json!({"still": "fine"}), None).await;
    assert_eq!(echo["status"], "completed", "{echo}");
    assert_eq!(echo["output"], json!({"echo": {"still": "fine"}}));
    assert_eq!(host.job(&spin).await["status"], "running", "the spin is still hogging its own slot");

    let membomb = host.wait_done(&membomb).await;
    assert_eq!(membomb["error"]["code"], "limit_exceeded", "{membomb}");
    let flood = host.wait_done(&flood).await;
    assert_eq!(flood["status"], "failed", "{flood}");
    let (status, _) = host.post(&format!("/v1/jobs/{spin}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let (status, health) = host.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_spin_ends_it_cancelled() {
    let host = Host::start_with_policy(&["spin"], Some(&spin_policy("")));
    let spin = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    host.wait_status(&spin, "running").await;

    let (status, job) = host.post(&format!("/v1/jobs/{spin}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{job}");
    let job = host.wait_done(&spin).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["error"]["code"], "cancelled");

    let (status, again) = host.post(&format!("/v1/jobs/{spin}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "job_finished");

    let events = host.events(&spin).await;
    let last = events.last().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["data"]["status"].as_str()),
        (Some("state"), Some("cancelled")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_ends_it_before_it_starts() {
    let host = Host::start_with_policy(&["spin", "echo"], Some(&spin_policy("[server]\nmax_concurrent_jobs = 1\n")));
    let spin = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    host.wait_status(&spin, "running").await;
    let queued = host.submit("echo", json!(1), None).await;
    let (status, job) = host.post(&format!("/v1/jobs/{queued}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["started_at"].is_null(), "{job}");
    let (status, _) = host.post(&format!("/v1/jobs/{spin}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_agent_is_stopped_by_its_fuel_budget() {
    let host = Host::start(&["spin"]);
    let job = host.run("spin", json!(null), Some(json!({"limits": {"fuel": 100_000_000, "deadline_ms": 60000}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("fuel"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_also_ends_its_running_child() {
    let host = Host::start_with_policy(&["orchestrator", "spin"], Some(&spin_policy("")));
    let (parent, child) = host.orchestrator_with_spinning_child().await;
    let child_id = child["id"].as_str().unwrap();
    let (status, _) = host.post(&format!("/v1/jobs/{parent}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(host.wait_done(&parent).await["status"], "cancelled");
    let child = host.wait_done(child_id).await;
    assert_eq!(child["status"], "cancelled", "{child}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rejecting_its_input_fails_with_invalid_input() {
    let host = Host::start(&["counter"]);
    let job = host.run("counter", json!({"not_a_key": 1}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_input", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("not_a_key"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_queue_bound_gets_429_with_retry_after_and_every_accepted_job_still_ends() {
    let policy = spin_policy("[server]\nmax_concurrent_jobs = 1\nmax_queued_jobs = 3\n");
    let host = Host::start_with_policy(&["spin"], Some(&policy));
    let body = json!({"agent": "spin", "input": {}, "lease": {"limits": {"deadline_ms": 400}}});
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let answer = host.submit_raw(&body).await;
        match answer.status {
            202 => accepted.push(answer.body["id"].as_str().unwrap().to_owned()),
            429 => {
                refused += 1;
                assert_eq!(answer.body["error"]["code"], "overloaded", "{:?}", answer.body);
                assert_eq!(answer.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
            }
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert!(accepted.len() >= 4, "one running and three queued were accepted: {accepted:?}");
    assert!(refused >= 1, "the rest was refused");
    for id in &accepted {
        let job = host.wait_done(id).await;
        assert_eq!(job["status"], "timed_out", "every accepted job runs to its end: {job}");
    }
    let stored: i64 = host.db().query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)).unwrap();
    assert_eq!(stored as usize, accepted.len(), "a refused submit leaves nothing behind");
    // With the queue drained, submits are accepted again.
    assert_eq!(host.submit_raw(&body).await.status, 202);
}
