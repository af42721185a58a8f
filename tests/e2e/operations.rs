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
