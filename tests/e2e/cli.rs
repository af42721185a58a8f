//! The `corral` CLI as a script sees it: output on stdout, and exit codes 0 (ok), 1 (the job
//! failed) and 2 (the request itself failed).

use serde_json::{Value, json};

use crate::harness::Host;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_prints_the_output_and_exits_0() {
    let host = Host::start(&["echo"]);
    let out = host.cli(&["invoke", "echo", "--input", r#"{"a":1}"#]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(printed, json!({"echo": {"a": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_reads_input_and_lease_from_files() {
    let host = Host::start(&["counter"]);
    let input = host.dir.path().join("input.json");
    std::fs::write(&input, r#"{"key": "from-file", "by": 3}"#).unwrap();
    let lease = host.dir.path().join("lease.json");
    std::fs::write(&lease, r#"{"grants": {"log": ["**"], "kv.read": ["**"]}}"#).unwrap();

    let out = host.cli(&["invoke", "counter", "--input", &format!("@{}", input.display())]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(printed, json!({"key": "from-file", "value": 3}));

    let out = host
        .cli(&[
            "invoke",
            "counter",
            "--input",
            &format!("@{}", input.display()),
            "--lease",
            &format!("@{}", lease.display()),
        ])
        .await;
    assert_eq!(out.code, 1, "a denied job exits 1: {out:?}");
    assert!(out.stderr.contains("denied"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_of_a_failing_job_exits_1() {
    let host = Host::start(&["spin"]);
    let out = host.cli(&["invoke", "spin", "--lease", r#"{"limits": {"deadline_ms": 200}}"#]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("timed out") || out.stderr.contains("timed_out"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_exit_2() {
    let host = Host::start(&["echo"]);
    let out = host.cli(&["invoke", "nosuchagent"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("nosuchagent"), "{out:?}");

    let out = host.cli(&["invoke", "echo", "--input", "{not json"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--input"), "{out:?}");

    // Nothing listens on port 9 of the loopback.
    let out = crate::harness::run_cli(vec!["--server".into(), "http://127.0.0.1:9".into(), "agents".into()]).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_follow_prints_events_then_the_output() {
    let host = Host::start(&["orchestrator", "echo"]);
    let input = r#"{"tasks": [{"agent": "echo", "input": {"n": 1}}, {"agent": "echo", "input": {"n": 2}}]}"#;
    let out = host.cli(&["invoke", "orchestrator", "--input", input, "--follow"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("[delegated] echo"), "{}", out.stdout);
    assert!(out.stdout.contains("[state] completed"), "{}", out.stdout);
    assert!(out.stdout.contains(r#"{"echo":{"n":1}}"#), "chunks are printed: {}", out.stdout);
    assert!(out.stdout.contains("\"results\""), "then the output: {}", out.stdout);

    let out = host.cli(&["--json", "invoke", "orchestrator", "--input", input, "--follow"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let kinds: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in ["state", "progress", "delegated", "chunk"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_json_lists_the_loaded_agents() {
    let host = Host::start(&["echo", "counter"]);
    let out = host.cli(&["agents", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let listing: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let names: Vec<&str> = listing["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["counter", "echo"]);

    let out = host.cli(&["agents"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("echo") && out.stdout.contains("counter"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_spin() {
    let host = Host::start_with_policy(&["spin"], Some(&crate::harness::spin_policy("")));
    let id = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    host.wait_status(&id, "running").await;
    let out = host.cli(&["cancel", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");
    let job = host.wait_done(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");

    let out = host.cli(&["cancel", &id]).await;
    assert_eq!(out.code, 2, "cancelling a finished job is a request error: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_jobs_and_events_show_what_happened() {
    let host = Host::start(&["echo"]);
    let job = host.run("echo", json!("hi"), None).await;
    let id = job["id"].as_str().unwrap();

    let out = host.cli(&["job", id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["output"], json!({"echo": "hi"}));

    let out = host.cli(&["jobs", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], id);

    let out = host.cli(&["--json", "events", id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<&Value> = events.iter().map(|e| &e["seq"]).collect();
    let served = host.events(id).await;
    assert_eq!(seqs, served.iter().map(|e| &e["seq"]).collect::<Vec<_>>(), "{events:?}");
    assert_eq!(events.last().unwrap()["kind"], "state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_by_a_host_with_principals() {
    let mut host = Host::start_with_policy(&["echo"], Some("[[principals]]\nname = \"alice\"\ntoken = \"a-token\"\n"));
    let out = host.cli(&["agents"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("token"), "{out:?}");
    host.token = Some("a-token".into());
    let out = host.cli(&["invoke", "echo", "--input", "1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(printed, json!({"echo": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_messages_and_inbox_show_a_message_and_its_stages() {
    let host = Host::start(&["greeter"]);
    let out = host.cli(&["send", "greeter", "--payload", r#"{"name": "cli"}"#, "--idempotency-token", "cli-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.split_whitespace().next().unwrap().to_owned();
    assert!(out.stdout.contains("RECEIVED → greeter"), "{out:?}");
    let m = host.message_done(&id).await;
    assert_eq!(m["stage"], "FULFILLED");

    let out = host.cli(&["message", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(crate::messages::stages(&shown), ["RECEIVED", "READ", "FULFILLED"]);

    let out = host.cli(&["messages", "--recipient", "greeter", "--stage", "FULFILLED"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id) && out.stdout.contains("FULFILLED"), "{out:?}");

    let out = host.cli(&["inbox", "greeter"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id) && out.stdout.contains(r#"{"name":"cli"}"#), "{out:?}");

    let out = host.cli(&["send", "nobody", "--payload", "1"]).await;
    assert_eq!(out.code, 2, "a refused send exits 2: {out:?}");
    assert!(out.stderr.contains("NO_ROUTE"), "{out:?}");
}
