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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_past_the_principals_rate_limit_get_429_rate_limited_with_retry_after() {
    let host = Host::start_with_policy(&["echo"], Some("[rate_limit]\nper_s = 1\nburst = 3\n"));
    let mut answers = Vec::new();
    for n in 0..8 {
        answers.push(host.submit_raw(&json!({"agent": "echo", "input": n})).await);
    }
    let accepted = answers.iter().filter(|a| a.status == 200 || a.status == 202).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(accepted >= 3, "the burst is served");
    assert_eq!(accepted + limited.len(), answers.len(), "only 2xx and 429");
    assert!(!limited.is_empty(), "8 submissions at once exceed a burst of 3 at 1/s");
    for answer in limited {
        assert_eq!(answer.code(), "rate_limited");
        let retry: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1, "Retry-After in whole seconds");
    }
}

/// Reads until the server closes the connection (or 20 s pass); returns what it sent.
fn read_until_closed(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_or_idles_is_disconnected_by_the_header_timeout() {
    use std::io::Write;
    let host = Host::start_with_policy(&["echo"], Some("[server]\nheader_timeout_ms = 300\n"));
    let addr = host.url.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        // Slowloris: half a request, then silence.
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: corral\r\n").unwrap();
        assert!(read_until_closed(&mut slow).is_some(), "a connection that never finishes its headers is closed");

        // Keep-alive: one full request is answered, then the idle connection is closed.
        let mut idle = std::net::TcpStream::connect(&addr).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: corral\r\n\r\n").unwrap();
        let answered = read_until_closed(&mut idle).expect("closed after idling");
        assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"), "answered first");
    })
    .await
    .unwrap();
    // The host still serves.
    assert_eq!(host.get("/healthz").await.0, 200);
}

/// Resident set size of `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_above_capacity_gets_429s_keeps_memory_bounded_and_completes_every_accepted_job() {
    use futures::StreamExt;
    let policy = crate::harness::spin_policy("[server]\nmax_concurrent_jobs = 2\nmax_queued_jobs = 32\n");
    let host = Host::start_with_policy(&["spin"], Some(&policy));
    // 64 KiB of padding per submission: 3,000 of them held at once would be ~200 MiB.
    let pad = "p".repeat(64 * 1024);
    for _ in 0..4 {
        assert_eq!(host.run("spin", json!({"iterations": 1000}), None).await["status"], "completed");
    }
    let baseline = rss_bytes(host.pid());

    let pid = host.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let (host_ref, pad_ref) = (&host, &pad);
    let answers: Vec<_> = futures::stream::iter(0..3_000)
        .map(|n| async move {
            let body = json!({"agent": "spin", "input": {"iterations": 2_000_000, "n": n, "pad": pad_ref}});
            host_ref.submit_raw(&body).await
        })
        .buffer_unordered(64)
        .collect()
        .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();

    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 200 || a.status == 202)
        .map(|a| a.body["id"].as_str().unwrap().to_owned())
        .collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(accepted.len() + refused.len(), answers.len(), "only 2xx and 429 under overload");
    assert!(refused.len() > 1_000, "most of a burst ~100x the queue is refused: {} refused", refused.len());
    for answer in &refused {
        assert_eq!(answer.code(), "overloaded");
        assert!(answer.headers.contains_key("retry-after"));
    }
    let growth = peak.saturating_sub(baseline);
    println!("overload: baseline RSS {} MiB, peak {} MiB, {} accepted", baseline >> 20, peak >> 20, accepted.len());
    assert!(growth < 128 << 20, "RSS grew by {} MiB under overload (baseline {} MiB)", growth >> 20, baseline >> 20);

    // Nothing acknowledged is lost: every accepted job completes.
    for id in &accepted {
        let job = host.wait_done(id).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
}
