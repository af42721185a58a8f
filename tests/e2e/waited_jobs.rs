//! Jobs a client waits for (`?wait=`): they run before they are written and are written whole
//! when they end — unless they run long, cause an effect, or outlast the wait, in which case
//! they are written first (see `host/src/jobs/journal.rs`). Whatever the client is answered
//! is already committed.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, eventually, spin_policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_job_that_ends_at_once_is_stored_with_its_whole_history() {
    let host = Host::start(&["echo"]);
    let answer =
        host.request(Method::POST, "/v1/jobs?wait=30000", None, Some(&json!({"agent": "echo", "input": 7}))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    // Answered ⇒ committed: a fresh read shows exactly what the client got.
    let stored = host.job(&id).await;
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["output"], answer.body["output"]);

    let events = host.events(&id).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless from 1: {events:?}");
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "state" => format!("state:{}", e["data"]["status"].as_str().unwrap()),
            kind => kind.to_owned(),
        })
        .collect();
    assert_eq!(summary, ["state:queued", "state:running", "capability", "log", "state:completed"]);

    let audited: i64 = host
        .db()
        .query_row("SELECT COUNT(*) FROM audit WHERE job_id = ?1 AND scope = 'log'", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(audited, 1, "the log decision is in the audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_job_that_runs_on_is_listed_and_cancellable_while_its_client_waits() {
    let host = Host::start_with_policy(&["spin"], Some(&spin_policy("")));
    let submit = {
        let (client, url) = (reqwest::Client::new(), host.url.clone());
        tokio::spawn(async move {
            let body = json!({"agent": "spin", "input": null, "lease": {"limits": {"deadline_ms": 60000}}});
            let resp = client.post(format!("{url}/v1/jobs?wait=60000")).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    // The client waits up to a minute, but the job is written as soon as it has run a while.
    let listed = eventually("the spinning job to be listed as running", || async {
        let (_, page) = host.get("/v1/jobs?status=running").await;
        page["jobs"].as_array().and_then(|jobs| jobs.first().cloned())
    })
    .await;
    let id = listed["id"].as_str().unwrap();
    let (status, cancelled) = host.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let (status, answered) = submit.await.unwrap();
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["id"], listed["id"]);
    assert_eq!(answered["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_is_answered_202_with_the_job_already_stored() {
    let host = Host::start_with_policy(&["spin"], Some(&spin_policy("")));
    let body = json!({"agent": "spin", "input": null, "lease": {"limits": {"deadline_ms": 60000}}});
    let answer = host.request(Method::POST, "/v1/jobs?wait=300", None, Some(&body)).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "running");
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(host.job(id).await["status"], "running");
    let (_, cancelled) = host.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_job_that_writes_kv_keeps_a_gapless_ordered_history_and_an_audit_trail() {
    let host = Host::start(&["counter"]);
    let job = host.run("counter", json!({"key": "hits"}), None).await;
    assert_eq!(job["status"], "completed", "{job}");
    let id = job["id"].as_str().unwrap();
    let events = host.events(id).await;
    let first_kinds: Vec<&str> = events.iter().take(2).map(|e| e["data"]["status"].as_str().unwrap_or("")).collect();
    assert_eq!(first_kinds, ["queued", "running"], "{events:?}");
    assert_eq!(events.last().unwrap()["data"]["status"], "completed");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // The kv decision is in the audit trail (written with the job row, before the write).
    let writes: i64 = host
        .db()
        .query_row("SELECT COUNT(*) FROM audit WHERE job_id = ?1 AND scope = 'kv.write'", [id], |r| r.get(0))
        .unwrap();
    assert!(writes >= 1, "kv.write audited");
}
