//! Running for months: retention, quotas, back-pressure — what an operator relies on.

use serde_json::json;

use crate::harness::{Host, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_past_retention_are_pruned_with_their_events_and_recent_ones_are_kept() {
    let host = Host::start_with_policy(&["echo"], Some("[retention]\njobs_ms = 3000\ninterval_ms = 100\n"));
    let old = host.run("echo", json!("old"), None).await;
    assert_eq!(old["status"], "completed");
    let old_id = old["id"].as_str().unwrap().to_owned();

    eventually("the old job is pruned", || async {
        (host.get(&format!("/v1/jobs/{old_id}")).await.0 == 404).then_some(())
    })
    .await;
    let recent = host.run("echo", json!("recent"), None).await;
    let recent_id = recent["id"].as_str().unwrap();
    assert_eq!(host.get(&format!("/v1/jobs/{recent_id}")).await.0, 200, "a job inside the window is kept");

    let db = host.db();
    let rows = |sql: &str| -> i64 { db.query_row(sql, [&old_id], |r| r.get(0)).unwrap() };
    assert_eq!(rows("SELECT COUNT(*) FROM events WHERE job_id = ?1"), 0, "its events went with it");
    assert_eq!(rows("SELECT COUNT(*) FROM audit WHERE job_id = ?1"), 0, "its audit rows too");
    assert!(host.logs().contains("pruned finished jobs past retention"), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_flood_is_stopped_by_the_agents_stored_quota_across_jobs_with_a_typed_error() {
    // Each row is "snoop" + "/" + "flood-<i>" + value: 1,013 bytes for a 1,000-byte value.
    let policy = "[kv_quota.agents.snoop]\nbytes = 5000\nkeys = 1000\n";
    let host = Host::start_with_policy(&["snoop"], Some(policy));
    let first = host.run("snoop", json!({"flood": 100, "bytes": 1000}), None).await;
    assert_eq!(first["output"]["writes"], 4, "{first}");
    let error = first["output"]["error"].as_str().unwrap();
    assert!(error.contains("kv quota exceeded: agent 'snoop' keeps 4052 bytes of its 5000"), "{error}");

    // The quota is about what is stored, not what one job wrote: the next job cannot grow it.
    let second = host.run("snoop", json!({"flood": 100, "bytes": 2000}), None).await;
    assert_eq!(second["output"]["writes"], 0, "{second}");
    let stored: i64 =
        host.db().query_row("SELECT SUM(length(value)) FROM kv WHERE namespace = 'snoop'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 4000, "refused writes changed nothing");
    // Rewriting within the quota is fine.
    let same = host.run("snoop", json!({"flood": 4, "bytes": 900}), None).await;
    assert_eq!(same["output"], json!({"writes": 4, "error": null}), "{same}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_principals_kv_quota_bounds_bytes_and_the_agents_quota_bounds_keys() {
    let host = Host::start_with_policy(&["snoop"], Some("[kv_quota]\nprincipal_bytes = 3000\nagent_keys = 3\n"));
    let bytes = host.run("snoop", json!({"flood": 100, "bytes": 1000}), None).await;
    assert_eq!(bytes["output"]["writes"], 2, "{bytes}");
    assert!(
        bytes["output"]["error"].as_str().unwrap().contains("principal 'local' keeps 2026 bytes of its 3000"),
        "{bytes}"
    );
    let keys = host.run("snoop", json!({"flood": 100, "bytes": 10}), None).await;
    assert_eq!(keys["output"]["writes"], 3, "{keys}");
    assert!(keys["output"]["error"].as_str().unwrap().contains("agent 'snoop' keeps 3 keys of its 3"), "{keys}");
}
