//! The HTTP API says precisely what is wrong with a request (status + stable code + a
//! message naming the problem), keeps principals' jobs invisible to each other, replays
//! idempotent submissions, pages listings without loss, and resumes event streams exactly.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, sse_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_invalid_json() {
    let host = Host::start(&["echo"]);
    let answer = host.post_raw("/v1/jobs", br#"{"agent": "echo", "input": "#.to_vec()).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_json"), "{:?}", answer.body);
    assert!(answer.message().to_lowercase().contains("json"), "{}", answer.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_an_agent_is_rejected_as_invalid_request() {
    let host = Host::start(&["echo"]);
    let answer = host.submit_raw(&json!({"input": 1})).await;
    assert!(answer.status == 400 || answer.status == 422, "{:?}", answer.body);
    assert_eq!(answer.code(), "invalid_request", "{:?}", answer.body);
    assert!(answer.message().contains("agent"), "{}", answer.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_is_404_naming_the_agent() {
    let host = Host::start(&["echo"]);
    let answer = host.submit_raw(&json!({"agent": "nosuchagent", "input": 1})).await;
    assert_eq!((answer.status, answer.code()), (404, "unknown_agent"), "{:?}", answer.body);
    assert!(answer.message().contains("nosuchagent"), "{}", answer.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_version_is_404_naming_the_version() {
    let host = Host::start(&["echo"]);
    let answer = host.submit_raw(&json!({"agent": "echo@9.9.9", "input": 1})).await;
    assert_eq!((answer.status, answer.code()), (404, "unknown_version"), "{:?}", answer.body);
    assert!(answer.message().contains("9.9.9"), "{}", answer.message());
    assert!(answer.message().contains("0.1.0"), "names what is loaded: {}", answer.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413_payload_too_large() {
    let host = Host::start(&["echo"]);
    let big = "x".repeat((1 << 20) + 1024);
    let answer = host.post_raw("/v1/jobs", serde_json::to_vec(&json!({"agent": "echo", "input": big})).unwrap()).await;
    assert_eq!((answer.status, answer.code()), (413, "payload_too_large"), "{:?}", answer.body);
    // Just under the limit is fine.
    let fits = "x".repeat((1 << 20) - 1024);
    let answer = host.submit_raw(&json!({"agent": "echo", "input": fits})).await;
    assert!(answer.status == 202 || answer.status == 200, "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_follows_the_policy() {
    let host = Host::start_with_policy(&["echo"], Some("[server]\nmax_body_bytes = 2048\n"));
    let answer = host
        .post_raw("/v1/jobs", serde_json::to_vec(&json!({"agent": "echo", "input": "y".repeat(4096)})).unwrap())
        .await;
    assert_eq!((answer.status, answer.code()), (413, "payload_too_large"), "{:?}", answer.body);
    let answer = host.submit_raw(&json!({"agent": "echo", "input": "small"})).await;
    assert!(answer.status == 202 || answer.status == 200, "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lease_is_400_naming_the_problem() {
    let host = Host::start(&["counter"]);
    let cases = [
        (json!({"grants": {"kv.wrte": ["**"]}}), "kv.wrte"),
        (json!({"grants": {"kv.read": ["counter/***"]}}), "***"),
        (json!({"grants": {"kv.read": [""]}}), "empty"),
        (json!({"ttl_ms": 1000, "expires_at": "2030-01-01T00:00:00Z"}), "ttl_ms"),
        (json!({"expires_at": "next tuesday"}), "next tuesday"),
    ];
    for (lease, named) in cases {
        let answer = host.submit_raw(&json!({"agent": "counter", "input": {"key": "x"}, "lease": lease})).await;
        assert_eq!((answer.status, answer.code()), (400, "invalid_lease"), "{lease}: {:?}", answer.body);
        assert!(answer.message().contains(named), "{lease}: message names {named}: {}", answer.message());
    }
    let (_, list) = host.get("/v1/jobs").await;
    assert!(list["jobs"].as_array().unwrap().is_empty(), "no job was created: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_is_404_job_not_found() {
    let host = Host::start(&["echo"]);
    for (method, path) in
        [(Method::GET, "/v1/jobs/nope"), (Method::POST, "/v1/jobs/nope/cancel"), (Method::GET, "/v1/jobs/nope/events")]
    {
        let answer = host.request(method, path, None, None).await;
        assert_eq!((answer.status, answer.code()), (404, "job_not_found"), "{path}: {:?}", answer.body);
    }
}

const TWO_PRINCIPALS: &str = r#"
[[principals]]
name = "alice"
token = "a-token"

[[principals]]
name = "bob"
token = "b-token"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_configured_requests_without_a_valid_token_are_401() {
    let host = Host::start_with_policy(&["echo"], Some(TWO_PRINCIPALS));
    let body = json!({"agent": "echo", "input": 1});
    for token in [None, Some("wrong-token")] {
        let answer = host.request(Method::POST, "/v1/jobs", token, Some(&body)).await;
        assert_eq!((answer.status, answer.code()), (401, "unauthorized"), "{token:?}: {:?}", answer.body);
        let answer = host.request(Method::GET, "/v1/agents", token, None).await;
        assert_eq!(answer.status, 401, "{token:?}");
    }
    let answer = host.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(answer.status, 200, "health needs no token");
    let answer = host.request(Method::POST, "/v1/jobs", Some("a-token"), Some(&body)).await;
    assert!(answer.status == 202 || answer.status == 200, "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_cannot_see_or_touch_another_principals_job() {
    let host = Host::start_with_policy(&["echo"], Some(TWO_PRINCIPALS));
    let answer = host
        .request(
            Method::POST,
            "/v1/jobs?wait=30000",
            Some("a-token"),
            Some(&json!({"agent": "echo", "input": "alice's"})),
        )
        .await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    let answer = host.request(Method::GET, &format!("/v1/jobs/{id}"), Some("a-token"), None).await;
    assert_eq!(answer.status, 200);

    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
    ] {
        let answer = host.request(method, &path, Some("b-token"), None).await;
        assert_eq!((answer.status, answer.code()), (404, "job_not_found"), "bob {path}: {:?}", answer.body);
    }
    let answer = host.request(Method::GET, "/v1/jobs", Some("b-token"), None).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body["jobs"].as_array().unwrap().iter().all(|j| j["id"] != id.as_str()), "{:?}", answer.body);
    let answer = host.request(Method::GET, "/v1/jobs", Some("a-token"), None).await;
    assert!(answer.body["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str()), "{:?}", answer.body);
    let events = sse_events(&host.client, &host.url, &id, Some("a-token"), None).await;
    assert!(!events.is_empty());

    // Idempotency keys are per principal: bob's "k" is not alice's "k".
    let alice = host
        .request(
            Method::POST,
            "/v1/jobs",
            Some("a-token"),
            Some(&json!({"agent": "echo", "input": "a", "idempotency_key": "k"})),
        )
        .await;
    let bob = host
        .request(
            Method::POST,
            "/v1/jobs",
            Some("b-token"),
            Some(&json!({"agent": "echo", "input": "b", "idempotency_key": "k"})),
        )
        .await;
    assert_eq!(alice.status, 202, "{:?}", alice.body);
    assert_eq!(bob.status, 202, "{:?}", bob.body);
    assert_ne!(alice.body["id"], bob.body["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_and_request_returns_the_same_job() {
    let host = Host::start(&["echo"]);
    let body = json!({"agent": "echo", "input": {"n": 1}, "idempotency_key": "order-42"});
    let first = host.submit_raw(&body).await;
    assert!(first.status == 202 || first.status == 200, "{:?}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = first.body["id"].as_str().unwrap().to_string();
    host.wait_done(&id).await;

    let again = host.submit_raw(&body).await;
    assert_eq!(again.status, 200, "a replay of a finished job: {:?}", again.body);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again.body["output"], json!({"echo": {"n": 1}}));

    let changed = host.submit_raw(&json!({"agent": "echo", "input": {"n": 2}, "idempotency_key": "order-42"})).await;
    assert_eq!((changed.status, changed.code()), (409, "idempotency_conflict"), "{:?}", changed.body);
    assert!(changed.message().contains("order-42"), "{}", changed.message());

    let (_, list) = host.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_listing_pages_return_every_job_exactly_once() {
    let host = Host::start(&["echo"]);
    let mut created = HashSet::new();
    for n in 0..7 {
        created.insert(host.submit("echo", json!(n), None).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_string(),
        };
        let (status, page) = host.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2, "{page}");
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "paging ends");
    assert_eq!(seen.len(), created.len(), "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
    let (_, filtered) = host.get("/v1/jobs?agent=nosuch").await;
    assert!(filtered["jobs"].as_array().unwrap().is_empty());
    let answer = host.request(Method::GET, "/v1/jobs?status=bogus", None, None).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_after_last_event_id_exactly() {
    let host = Host::start(&["orchestrator", "echo"]);
    let job = host
        .run("orchestrator", json!({"tasks": [{"agent": "echo", "input": 1}, {"agent": "echo", "input": 2}]}), None)
        .await;
    let id = job["id"].as_str().unwrap();
    let all = host.events(id).await;
    let n = all.len() as u64;
    assert!(n >= 6, "{all:?}");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    for after in [1, 3, n - 1] {
        let rest = sse_events(&host.client, &host.url, id, None, Some(after)).await;
        assert_eq!(rest, all[after as usize..].to_vec(), "after {after}");
    }
    let kinds: HashSet<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["state", "progress", "delegated", "chunk", "capability"] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_health_and_openapi_describe_the_host() {
    let host = Host::start(&["echo", "counter"]);
    let (status, agents) = host.get("/v1/agents").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = agents["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["counter", "echo"]);
    assert_eq!(agents["errors"], json!([]));
    let (status, health) = host.get("/healthz").await;
    assert_eq!((status, &health), (200, &json!({"status": "ok"})));
    let (status, openapi) = host.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(openapi["paths"].get("/v1/jobs").is_some(), "{openapi}");
    let (status, missing) = host.get("/v2/nothing").await;
    assert_eq!(status, 404, "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_answers_202_at_once_or_200_with_the_result_when_asked_to_wait() {
    let host = Host::start(&["echo"]);
    let answer =
        host.request(Method::POST, "/v1/jobs?wait=30000", None, Some(&json!({"agent": "echo", "input": "w"}))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "completed");
    assert_eq!(answer.body["output"], json!({"echo": "w"}));
    assert_eq!(answer.body["agent_version"], "0.1.0");
    assert_eq!(answer.body["attempt"], 1);
    assert!(answer.body["parent_id"].is_null());
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(answer.body[field].as_str().is_some_and(|t| t.ends_with('Z')), "{field}: {:?}", answer.body);
    }

    let answer = host.submit_raw(&json!({"agent": "echo@0.1.0", "input": "now"})).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert!(matches!(answer.body["status"].as_str(), Some("queued" | "running" | "completed")), "{:?}", answer.body);
    let job = host.wait_done(answer.body["id"].as_str().unwrap()).await;
    assert_eq!(job["output"], json!({"echo": "now"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_once_the_store_takes_writes_and_an_agent_is_loaded_and_503_otherwise() {
    let host = Host::start(&["echo"]);
    let ready = host.request(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], true);
    assert_eq!(ready.body["store_writable"], true);
    assert_eq!(ready.body["agents_loaded"], 1);

    let empty = Host::start(&[]);
    let not_ready = empty.request(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(not_ready.status, 503, "{:?}", not_ready.body);
    assert_eq!(not_ready.body["ready"], false);
    assert!(not_ready.body["problem"].as_str().unwrap().contains("no agent"), "{:?}", not_ready.body);
    let live = empty.request(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(live.status, 200, "liveness does not depend on agents");
}

/// The samples of one metric in a parsed scrape, as (labels, value).
fn samples(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let labels = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let value = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (labels, value)
        })
        .collect()
}

async fn scrape(host: &Host, token: Option<&str>) -> (u16, prometheus_parse::Scrape) {
    let url = format!("{}/metrics", host.url);
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    (status, prometheus_parse::Scrape::parse(lines).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_whose_numbers_move_as_jobs_run_and_only_operators_read_them() {
    let host = Host::start(&["echo", "counter"]);
    let (status, before) = scrape(&host, None).await;
    assert_eq!(status, 200);
    let finished = |s: &prometheus_parse::Scrape, agent: &str| {
        samples(s, "corral_jobs_finished_total")
            .iter()
            .filter(|(l, _)| {
                l.get("agent").map(String::as_str) == Some(agent)
                    && l.get("status").map(String::as_str) == Some("completed")
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    let echo_before = finished(&before, "echo");
    for n in 0..3 {
        assert_eq!(host.run("echo", json!(n), None).await["status"], "completed");
    }
    host.run("counter", json!({"key": "m"}), Some(json!({"grants": {"kv.read": ["**"]}}))).await; // denied kv.write
    let (_, after) = scrape(&host, None).await;
    assert_eq!(finished(&after, "echo") - echo_before, 3.0, "three more echo jobs completed");
    let denied: f64 = samples(&after, "corral_lease_decisions_total")
        .iter()
        .filter(|(l, _)| {
            l.get("scope").map(String::as_str) == Some("kv.write")
                && l.get("decision").map(String::as_str) == Some("deny")
        })
        .map(|(_, v)| *v)
        .sum();
    assert!(denied >= 1.0, "the kv.write denial is counted");
    assert!(samples(&after, "corral_store_commit_seconds").first().is_some_and(|(_, count)| *count > 0.0));
    assert!(samples(&after, "corral_store_bytes").first().is_some_and(|(_, bytes)| *bytes > 0.0));
    assert_eq!(samples(&after, "corral_agents_loaded").first().map(|(_, v)| *v), Some(2.0));
    assert_eq!(samples(&after, "corral_jobs_queued").first().map(|(_, v)| *v), Some(0.0));

    // With tokens, only an operator's token reads them.
    let policy = "[[principals]]\nname = \"ops\"\ntoken = \"ops-token\"\noperator = true\n\n[[principals]]\nname = \"dev\"\ntoken = \"dev-token\"\n";
    let guarded = Host::start_with_policy(&["echo"], Some(policy));
    assert_eq!(scrape(&guarded, None).await.0, 401);
    assert_eq!(scrape(&guarded, Some("dev-token")).await.0, 403);
    assert_eq!(scrape(&guarded, Some("ops-token")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_nothing_is_served_at_metrics_and_jobs_still_run() {
    let host = Host::start_with_policy(&["echo"], Some("[server]\nmetrics = false\n"));
    assert_eq!(host.run("echo", json!(1), None).await["status"], "completed");
    let answer = host.request(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.code(), "metrics_off");
}
