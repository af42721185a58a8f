//! The escapes a review reproduced against a real host, each closed: narrowing a lease must not
//! widen what is reachable, the host never reaches itself, refused calls are charged and
//! bounded, lease sizes are capped, and path traversal is judged on the URL as it is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::harness::{Host, ceiling_with_limits, ceiling_with_net_fetch, of_kind};

/// A loopback server that answers every request with "reached" and counts what it received.
async fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "reached"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

fn port_of(host: &Host) -> u16 {
    host.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// The job's denials as recorded in the audit table: (scope, target, reason).
fn audited_denials(host: &Host, job_id: &str) -> Vec<(String, String, String)> {
    let db = host.db();
    let mut stmt = db
        .prepare("SELECT scope, target, reason FROM audit WHERE job_id = ?1 AND decision = 'deny' ORDER BY id")
        .unwrap();
    stmt.query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<String>>(2)?.unwrap_or_default())))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_delegation_with_a_narrower_lease_naming_loopback_is_denied_and_audited() {
    let (port, hits) = counting_server().await;
    let host = Host::start_with_policy(&["escape"], Some(&ceiling_with_net_fetch(&["*://*:*/**"])));
    let own_api = format!("http://127.0.0.1:{}/v1/jobs", port_of(&host));
    for (url, grant) in [
        (format!("http://127.0.0.1:{port}/secret"), "http://127.0.0.1:*/**".to_string()),
        (own_api.clone(), "http://127.0.0.1:*/**".to_string()),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "http://169.254.169.254/**".to_string()),
    ] {
        // The child's lease is a subset of the parent's (`*://*:*/**`), so delegation accepts
        // it — and it must still not reach an address the operator never named.
        let lease = json!({"grants": {"net.fetch": [grant]}});
        let parent = host.run("escape", json!({"delegate_self": {"fetch": url, "lease": lease}}), None).await;
        assert_eq!(parent["status"], "failed", "{url}: {parent}");
        let events = host.events(parent["id"].as_str().unwrap()).await;
        let delegated = of_kind(&events, "delegated");
        assert_eq!(delegated.len(), 1, "the child was started: {events:?}");
        let child_id = delegated[0]["data"]["child_id"].as_str().unwrap();
        let child = host.job(child_id).await;
        assert_eq!(child["status"], "failed", "{child}");
        assert_eq!(child["error"]["code"], "denied", "{child}");
        assert_eq!(child["error"]["scope"], "net.fetch", "{child}");
        let denials = audited_denials(&host, child_id);
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert_eq!(denials[0].0, "net.fetch");
        assert!(denials[0].2.contains("does not name") || denials[0].2.contains("own address"), "{denials:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request reached the loopback server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_declaring_a_loopback_literal_does_not_reach_it() {
    let (port, hits) = counting_server().await;
    let host = Host::start_with_policy(&["loopback"], Some(&ceiling_with_net_fetch(&["*://*:*/**"])));
    let job = host.run("loopback", json!({"fetch": format!("http://127.0.0.1:{port}/")}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("does not name"), "{job}");
    let denials = audited_denials(&host, job["id"].as_str().unwrap());
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_does_not_fetch_its_own_api_even_when_the_operator_names_loopback() {
    let (port, hits) = counting_server().await;
    let host = Host::start_with_policy(&["escape"], Some(&ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])));
    let own = host.run("escape", json!({"fetch": format!("http://127.0.0.1:{}/v1/jobs", port_of(&host))}), None).await;
    assert_eq!(own["status"], "failed", "{own}");
    assert_eq!(own["error"]["code"], "denied", "{own}");
    assert!(own["error"]["message"].as_str().unwrap().contains("own address"), "{own}");
    // Another port on the named address is reachable: the rule is about the host itself.
    let other = host.run("escape", json!({"fetch": format!("http://127.0.0.1:{port}/x")}), None).await;
    assert_eq!(other["status"], "completed", "{other}");
    assert_eq!(other["output"]["body"], "reached");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_oversize_refused_urls_ends_by_its_budget_with_storage_bounded() {
    let host = Host::start_with_policy(&["escape"], Some(&ceiling_with_limits(&[], 1_000_000_000_000, 2_000)));
    // 256 KiB per refused URL, 2,000 calls: stored whole that would be ~1 GB of audit rows
    // and events.
    let job = host.run("escape", json!({"flood_urls": 256 * 1024}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("host-call"), "{job}");
    let id = job["id"].as_str().unwrap();

    let db = host.db();
    let (rows, longest): (i64, i64) = db
        .query_row("SELECT count(*), max(length(target)) FROM audit WHERE job_id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(rows, 2_000, "every refused call is audited (and counted)");
    assert!(longest <= 520, "targets are cut before they are stored: {longest}");
    let event_bytes: i64 =
        db.query_row("SELECT sum(length(data)) FROM events WHERE job_id = ?1", [id], |r| r.get(0)).unwrap();
    assert!(event_bytes < 4 << 20, "{event_bytes} bytes of events");
    let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let page_size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert!(pages * page_size < 32 << 20, "database is {} bytes", pages * page_size);
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kb < 768 * 1024, "host peak RSS {peak_kb} kB");
}

/// A lease request with `n` adversarial kv.read patterns (`**a**a…x`, each distinct) of
/// `len` bytes, in the layered form so every pattern is a layer compared with every other.
fn adversarial_lease(n: usize, len: usize) -> Value {
    let layers: Vec<Value> = (0..n)
        .map(|i| {
            let mut p = "**a".repeat(len / 3);
            p.truncate(len - 4);
            p.push_str(&format!("{:04}", i % 10_000));
            json!([p])
        })
        .collect();
    json!({"grants": {"kv.read": layers}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_request_at_the_size_caps_is_handled_and_larger_ones_are_refused() {
    let host = Host::start(&["echo"]);
    // Exactly at the caps: 64 patterns, 4,096 bytes of pattern text.
    let at_cap = adversarial_lease(64, 64);
    let answer = host.submit_raw(&json!({"agent": "echo", "input": 1, "lease": at_cap})).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);

    for (lease, what) in [
        (adversarial_lease(65, 8), "65 patterns"),
        (adversarial_lease(64, 65), "bytes of patterns"),
        // The reproduced case: 96 layers of ~510 `**a` each (148 KB).
        (adversarial_lease(96, 1532), "patterns"),
    ] {
        let answer = host.submit_raw(&json!({"agent": "echo", "input": 1, "lease": lease})).await;
        assert_eq!(answer.status, 400, "{what}: {:?}", answer.body);
        assert_eq!(answer.code(), "invalid_lease", "{what}");
        assert!(answer.message().contains("at most"), "{what}: {}", answer.message());
    }
    let (_, list) = host.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "only the job at the caps exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_hidden_by_tabs_newlines_or_a_missing_double_slash_is_refused_and_nothing_is_sent() {
    let (port, hits) = counting_server().await;
    let host = Host::start_with_policy(&["fetch"], Some(&ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])));
    let lease = json!({"grants": {"log": ["**"], "net.fetch": [format!("http://127.0.0.1:{port}/allowed/**")]}});
    for url in [
        format!("http://127.0.0.1:{port}/allowed/..\t;/admin"),
        format!("http://127.0.0.1:{port}/allowed/.\n.;/admin"),
        format!("http:/127.0.0.1:{port}/allowed/..;/admin?a=://"),
        format!("http://127.0.0.1:{port}/allowed/%2E%2e;x/admin"),
    ] {
        let job = host.run("fetch", json!({"url": url}), Some(lease.clone())).await;
        assert_eq!(job["status"], "failed", "{url:?}: {job}");
        assert_eq!(job["error"]["code"], "denied", "{url:?}: {job}");
        assert!(job["error"]["message"].as_str().unwrap().contains("'..'"), "{url:?}: {job}");
    }
    // Headers that re-route a request behind a proxy are refused too.
    for header in ["X-Original-URL", "X-Forwarded-Host", "Forwarded", "X-HTTP-Method-Override", "X-Rewrite-URL"] {
        let input = json!({"url": format!("http://127.0.0.1:{port}/allowed/x"), "headers": {header: "/admin"}});
        let job = host.run("fetch", input, Some(lease.clone())).await;
        assert_eq!(job["status"], "failed", "{header}: {job}");
        assert_eq!(job["error"]["code"], "invalid_input", "{header}: {job}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was sent");
    let ok = host.run("fetch", json!({"url": format!("http://127.0.0.1:{port}/allowed/x")}), Some(lease)).await;
    assert_eq!(ok["status"], "completed", "{ok}");
}
