//! Leases decide what a job may do: every host call is checked against the job's effective
//! lease (agent's declared scopes ∩ policy ceiling ∩ request ∩ parent), a denial is a typed
//! value recorded as a `capability` event and an audit row, and it never takes the host down.

use serde_json::{Value, json};

use crate::harness::{Host, ceiling_with_net_fetch, eventually, of_kind};

/// Audit rows of a job: (scope, target, decision, reason).
fn audit_rows(host: &Host, job: &str) -> Vec<(String, String, String, Option<String>)> {
    let db = host.db();
    let mut stmt =
        db.prepare("SELECT scope, target, decision, reason FROM audit WHERE job_id = ?1 ORDER BY id").unwrap();
    stmt.query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_with_kv_write_increments_across_jobs() {
    let host = Host::start(&["counter"]);
    let first = host.run("counter", json!({"key": "hits"}), None).await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["output"], json!({"key": "hits", "value": 1}));
    let second = host.run("counter", json!({"key": "hits", "by": 5}), None).await;
    assert_eq!(second["output"], json!({"key": "hits", "value": 6}));
    // The job's lease shows what it ran under.
    assert!(second["lease"]["grants"]["kv.write"].is_array(), "{second}");
    // A request without grants narrows no grant, only what it names.
    let third = host.run("counter", json!({"key": "hits"}), Some(json!({"limits": {"deadline_ms": 5000}}))).await;
    assert_eq!(third["output"], json!({"key": "hits", "value": 7}), "{third}");
    assert_eq!(third["lease"]["limits"]["deadline_ms"], 5000);
    assert_eq!(third["lease"]["grants"], second["lease"]["grants"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_write_without_grant_is_denied_and_audited() {
    let host = Host::start(&["counter", "echo"]);
    let lease = json!({"grants": {"log": ["**"], "kv.read": ["**"]}});
    let job = host.run("counter", json!({"key": "locked"}), Some(lease)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = &job["error"];
    assert_eq!(error["code"], "denied", "{job}");
    assert_eq!(error["scope"], "kv.write");
    assert_eq!(error["target"], "counter/locked");
    assert!(job["lease"]["grants"].get("kv.write").is_none(), "effective lease has no kv.write: {job}");

    let id = job["id"].as_str().unwrap();
    let events = host.events(id).await;
    let denial = of_kind(&events, "capability")
        .into_iter()
        .find(|e| e["data"]["decision"] == "deny")
        .unwrap_or_else(|| panic!("no deny capability event: {events:?}"));
    assert_eq!(denial["data"]["scope"], "kv.write");
    assert_eq!(denial["data"]["target"], "counter/locked");
    assert!(!denial["data"]["reason"].as_str().unwrap_or_default().is_empty(), "{denial}");

    let rows = eventually("the denial's audit row", || {
        let rows = audit_rows(&host, id);
        async move { rows.iter().any(|r| r.2 == "deny").then_some(rows) }
    })
    .await;
    let deny = rows.iter().find(|r| r.2 == "deny").unwrap();
    assert_eq!((deny.0.as_str(), deny.1.as_str()), ("kv.write", "counter/locked"), "{rows:?}");
    assert!(deny.3.as_deref().is_some_and(|r| !r.is_empty()), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0 == "kv.read" && r.2 == "allow"),
        "the kv.read check was allowed and audited: {rows:?}"
    );

    // Nothing was written, and the host keeps serving.
    let db = host.db();
    let written: i64 = db
        .query_row("SELECT count(*) FROM kv WHERE namespace = 'counter' AND key = 'locked'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(written, 0);
    assert_eq!(host.run("echo", json!("still here"), None).await["status"], "completed");
    assert_eq!(host.run("counter", json!({"key": "locked"}), None).await["output"]["value"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sneaky_agent_gets_denials_as_values_and_completes() {
    let host = Host::start(&["sneaky", "echo"]);
    let job = host.run("sneaky", json!(null), None).await;
    assert_eq!(job["status"], "completed", "{job}");
    let report = &job["output"];
    assert_eq!(report["all_denied"], true, "{report}");
    let calls = report["calls"].as_array().unwrap();
    let kv_set = calls.iter().find(|c| c["call"] == "kv.set").unwrap();
    assert_eq!(kv_set["scope"], "kv.write");
    assert_eq!(kv_set["target"], "sneaky/stolen");
    let fetch = calls.iter().find(|c| c["call"] == "http.fetch").unwrap();
    assert_eq!(fetch["scope"], "net.fetch");

    let events = host.events(job["id"].as_str().unwrap()).await;
    let denied: Vec<&str> = of_kind(&events, "capability")
        .iter()
        .filter(|e| e["data"]["decision"] == "deny")
        .map(|e| e["data"]["scope"].as_str().unwrap())
        .collect();
    for scope in ["kv.write", "kv.read", "net.fetch", "agent.delegate", "events"] {
        assert!(denied.contains(&scope), "{scope} denial recorded: {denied:?}");
    }
    // No child job was started and nothing was stored.
    assert!(of_kind(&events, "delegated").is_empty());
    let (_, list) = host.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    let stored: i64 =
        host.db().query_row("SELECT count(*) FROM kv WHERE namespace = 'sneaky'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 0);
}

/// A tiny HTTP server on 127.0.0.1, in this test process.
pub async fn serve_loopback(body: &'static str) -> u16 {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/allowed/{rest}", get(move || async move { body }))
        .route("/other", get(|| async { "other" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_is_allowed_only_for_urls_the_lease_grants() {
    let port = serve_loopback("hello from the allowed path").await;
    let other_port = serve_loopback("the other server").await;
    let host = Host::start_with_policy(&["fetch"], Some(&ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])));
    let lease = json!({"grants": {"log": ["**"], "net.fetch": [format!("http://127.0.0.1:{port}/allowed/**")]}});

    let ok = host.run("fetch", json!({"url": format!("http://127.0.0.1:{port}/allowed/x")}), Some(lease.clone())).await;
    assert_eq!(ok["status"], "completed", "{ok}\n{}", host.logs());
    assert_eq!(ok["output"]["status"], 200);
    assert_eq!(ok["output"]["body"], "hello from the allowed path");

    for url in [
        format!("http://127.0.0.1:{port}/other"),
        format!("http://127.0.0.1:{other_port}/allowed/x"),
        format!("http://localhost:{port}/allowed/x"),
    ] {
        let job = host.run("fetch", json!({"url": url}), Some(lease.clone())).await;
        assert_eq!(job["status"], "failed", "{url}: {job}");
        assert_eq!(job["error"]["code"], "denied", "{url}: {job}");
        assert_eq!(job["error"]["scope"], "net.fetch", "{url}: {job}");
        let target = job["error"]["target"].as_str().unwrap();
        assert!(target.starts_with(url.trim_end_matches("/x").trim_end_matches("/other")), "{url} vs {target}");
        let events = host.events(job["id"].as_str().unwrap()).await;
        assert!(
            of_kind(&events, "capability")
                .iter()
                .any(|e| e["data"]["decision"] == "deny" && e["data"]["scope"] == "net.fetch"),
            "{url}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_made_up_by_the_agent_is_not_reported_as_a_host_denial() {
    let host = Host::start(&["sneaky"]);
    let job = host.run("sneaky", json!({"forge_denial": true}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "agent_failed", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("never issued"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_host_grant_does_not_reach_loopback_unless_the_operator_names_the_ip() {
    let port = serve_loopback("internal").await;
    let url = format!("http://127.0.0.1:{port}/allowed/x");
    let wildcard = Host::start_with_policy(&["fetch"], Some(&ceiling_with_net_fetch(&["*://*:*/**"])));

    // A wildcard host is meant for public names: a loopback literal is refused.
    let job = wildcard.run("fetch", json!({"url": url}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("non-public"), "{job}");

    // A request naming the address narrows the lease, so it cannot widen what is reachable.
    let lease = json!({"grants": {"log": ["**"], "net.fetch": [format!("http://127.0.0.1:{port}/**")]}});
    let job = wildcard.run("fetch", json!({"url": url}), Some(lease.clone())).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("does not name"), "{job}");

    // The operator naming it in the policy is what makes it reachable.
    let named = Host::start_with_policy(&["fetch"], Some(&ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])));
    let job = named.run("fetch", json!({"url": url}), Some(lease)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output"]["body"], "internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_spend_their_parents_host_call_budget() {
    let host = Host::start(&["orchestrator", "echo"]);
    let tasks: Vec<Value> = (0..8).map(|i| json!({"agent": "echo", "input": i})).collect();
    // The orchestrator alone makes 3 calls per task (+1 final progress) = 25; each echo child
    // adds 1 log call, charged back to the parent: 33 > 30.
    let job = host.run("orchestrator", json!({"tasks": tasks}), Some(json!({"limits": {"max_host_calls": 30}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("host-call"), "{job}");

    let enough =
        host.run("orchestrator", json!({"tasks": tasks}), Some(json!({"limits": {"max_host_calls": 40}}))).await;
    assert_eq!(enough["status"], "completed", "{enough}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_without_a_policy_net_grant_is_denied_even_if_the_request_asks() {
    let port = serve_loopback("secret").await;
    let host = Host::start(&["fetch"]);
    let url = format!("http://127.0.0.1:{port}/allowed/x");
    let job =
        host.run("fetch", json!({"url": url}), Some(json!({"grants": {"net.fetch": ["http://127.0.0.1:*/**"]}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert_eq!(job["error"]["scope"], "net.fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_wider_than_the_parent_lease_is_refused() {
    let host = Host::start(&["greedy", "counter"]);
    let lease = json!({"grants": {
        "log": ["**"],
        "agent.delegate": ["**"],
        "kv.read": ["counter/*"],
        "kv.write": ["counter/*"],
    }});
    let job = host.run("greedy", json!({"key": "greedy"}), Some(lease)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert_eq!(job["error"]["scope"], "agent.delegate", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("delegation refused"), "the error says the delegation was refused: {message}");
    assert!(message.contains("wider"), "and why: {message}");

    let events = host.events(job["id"].as_str().unwrap()).await;
    assert!(of_kind(&events, "delegated").is_empty(), "no child was started: {events:?}");
    let (_, list) = host.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "no child job exists: {list}");
    let stored: i64 = host.db().query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_delegates_to_echo_and_streams_progress_and_chunks() {
    let host = Host::start(&["orchestrator", "echo"]);
    let input = json!({"tasks": [
        {"agent": "echo", "input": {"n": 1}},
        {"agent": "echo", "input": {"n": 2}, "lease": {"grants": {"log": ["**"]}}},
    ]});
    let job = host.run("orchestrator", input, None).await;
    assert_eq!(job["status"], "completed", "{job}\n{}", host.logs());
    assert_eq!(job["output"], json!({"results": [{"echo": {"n": 1}}, {"echo": {"n": 2}}]}));
    let id = job["id"].as_str().unwrap();

    let events = host.events(id).await;
    let progress = of_kind(&events, "progress");
    assert_eq!(progress.len(), 3, "{events:?}");
    assert_eq!(progress[2]["data"]["done"], 2);
    assert_eq!(progress[2]["data"]["total"], 2);
    let chunks = of_kind(&events, "chunk");
    assert_eq!(chunks.len(), 2, "{events:?}");
    let first: Value = serde_json::from_str(chunks[0]["data"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(first, json!({"echo": {"n": 1}}));
    let delegated = of_kind(&events, "delegated");
    assert_eq!(delegated.len(), 2, "{events:?}");
    for d in delegated {
        assert_eq!(d["data"]["agent"], "echo");
        let child = host.job(d["data"]["child_id"].as_str().unwrap()).await;
        assert_eq!(child["parent_id"], id, "{child}");
        assert_eq!(child["status"], "completed", "{child}");
        assert_eq!(child["agent"], "echo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_refuses_calls_with_a_reason_naming_the_expiry() {
    // One job slot: a spin holds it for 500 ms, so a counter with a 50 ms lease queued
    // behind it can only start after its lease expired.
    let host = Host::start_with_policy(&["spin", "counter"], Some("[server]\nmax_concurrent_jobs = 1\n"));
    let spin = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 500}}))).await;
    host.wait_status(&spin, "running").await;
    let counter = host.submit("counter", json!({"key": "late"}), Some(json!({"ttl_ms": 50}))).await;
    let job = host.wait_done(&counter).await;
    assert_eq!(host.job(&spin).await["status"], "timed_out");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert!(job["lease"]["expires_at"].is_string(), "{job}");
    let events = host.events(&counter).await;
    let denial =
        of_kind(&events, "capability").into_iter().find(|e| e["data"]["decision"] == "deny").expect("a denial event");
    let reason = denial["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("expired"), "reason names the expiry: {reason}");
    // A job with a long enough lease is unaffected.
    let ok = host.run("counter", json!({"key": "late"}), Some(json!({"ttl_ms": 60000}))).await;
    assert_eq!(ok["status"], "completed", "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_beyond_max_children_is_denied() {
    let host = Host::start(&["orchestrator", "echo"]);
    let tasks: Vec<Value> = (0..3).map(|n| json!({"agent": "echo", "input": n})).collect();
    let job = host.run("orchestrator", json!({"tasks": tasks}), Some(json!({"limits": {"max_children": 2}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert_eq!(job["error"]["scope"], "agent.delegate", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("max_children"), "{job}");
    let events = host.events(job["id"].as_str().unwrap()).await;
    assert_eq!(of_kind(&events, "delegated").len(), 2, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_deeper_than_the_depth_limit_is_refused() {
    let host = Host::start(&["orchestrator", "echo"]);
    // orchestrator → orchestrator → echo needs depth 2; the lease allows 1.
    let input = json!({"tasks": [{"agent": "orchestrator", "input": {"tasks": [{"agent": "echo", "input": "deep"}]}}]});
    let job = host.run("orchestrator", input.clone(), Some(json!({"limits": {"delegation_depth": 1}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("depth"), "{job}");
    let (_, echoes) = host.get("/v1/jobs?agent=echo").await;
    assert!(echoes["jobs"].as_array().unwrap().is_empty(), "echo never ran: {echoes}");

    let job = host.run("orchestrator", input, Some(json!({"limits": {"delegation_depth": 2}}))).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output"], json!({"results": [{"results": [{"echo": "deep"}]}]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_beyond_the_net_bytes_budget_fails() {
    let port = serve_loopback("a response body that is longer than the tiny byte budget of this job").await;
    let host = Host::start_with_policy(&["fetch"], Some(&ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])));
    let url = format!("http://127.0.0.1:{port}/allowed/x");
    let job = host.run("fetch", json!({"url": url}), Some(json!({"limits": {"net_bytes": 16}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("net_bytes"), "{job}");
    let ok = host.run("fetch", json!({"url": url}), None).await;
    assert_eq!(ok["status"], "completed", "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_built_in_policy_each_agent_has_its_own_kv_namespace_and_an_operator_grant_shares_one() {
    let host = Host::start(&["counter", "snoop"]);
    let counted = host.run("counter", json!({"key": "visits"}), None).await;
    assert_eq!(counted["output"], json!({"key": "visits", "value": 1}), "{counted}");
    assert_eq!(counted["lease"]["grants"]["kv.write"], json!(["counter/**"]), "the template is expanded in the lease");

    // snoop declares kv on every key, but the ceiling gives it only `snoop/**`.
    let snooped = host.run("snoop", json!({"namespace": "counter", "key": "visits", "value": "0"}), None).await;
    assert_eq!(snooped["status"], "completed", "{snooped}");
    for call in ["read", "write"] {
        let outcome = &snooped["output"][call];
        assert_eq!(outcome["denied"], true, "{call}: {snooped}");
        assert!(outcome["error"].as_str().unwrap().contains("counter/visits"), "{call}: {outcome}");
    }
    // Its own namespace works, and the literal template text is nobody's namespace.
    let own = host.run("snoop", json!({"namespace": "snoop", "key": "k", "value": "1"}), None).await;
    assert_eq!(own["output"]["write"]["denied"], false, "{own}");
    let literal = host.run("snoop", json!({"namespace": "{agent}", "key": "k"}), None).await;
    assert_eq!(literal["output"]["write"]["denied"], true, "{literal}");
    let after = host.run("counter", json!({"key": "visits"}), None).await;
    assert_eq!(after["output"]["value"], 2, "counter's state was not touched: {after}");

    // An operator who wants agents to share a namespace grants it.
    let policy = "[ceiling.grants]\n\"kv.read\" = [\"{agent}/**\", \"counter/**\"]\n\"kv.write\" = [\"{agent}/**\"]\n\"log\" = [\"**\"]\n";
    let shared = Host::start_with_policy(&["counter", "snoop"], Some(policy));
    shared.run("counter", json!({"key": "visits"}), None).await;
    let read = shared.run("snoop", json!({"namespace": "counter", "key": "visits"}), None).await;
    assert_eq!(read["output"]["read"], json!({"denied": false, "value": "1", "error": null}), "{read}");
    assert_eq!(read["output"]["write"]["denied"], true, "read shared, write still its own: {read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_flood_stops_at_the_jobs_kv_bytes_budget_and_writes_nothing_past_it() {
    let host = Host::start(&["snoop"]);
    // 10 writes of 1,000 bytes each (plus ~13 bytes of target) fit in 11,000; the 11th does not.
    let lease = json!({"limits": {"kv_bytes": 11_000}});
    let job = host.run("snoop", json!({"flood": 1000, "bytes": 1000}), Some(lease)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output"]["writes"], 10, "{job}");
    assert!(job["output"]["error"].as_str().unwrap().contains("kv_bytes budget exhausted"), "{job}");
    let stored: i64 =
        host.db().query_row("SELECT count(*) FROM kv WHERE namespace = 'snoop'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 10, "the refused write was not made");

    // The built-in budget (64 MiB) stops a flood of 1 MiB values long before the host-call limit.
    let job = host.run("snoop", json!({"flood": 5000, "bytes": 1_000_000}), None).await;
    assert_eq!(job["output"]["writes"], 67, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_output_bytes_fails_the_job_cleanly_and_is_not_stored() {
    let host = Host::start(&["echo"]);
    let big = "y".repeat(10_000);
    let job = host.run("echo", json!(big), Some(json!({"limits": {"max_output_bytes": 1000}}))).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    assert_eq!(job["error"]["limit"], "max_output_bytes", "{job}");
    assert!(job["output"].is_null(), "{job}");
    let small = host.run("echo", json!("ok"), Some(json!({"limits": {"max_output_bytes": 1000}}))).await;
    assert_eq!(small["status"], "completed", "{small}");
}
