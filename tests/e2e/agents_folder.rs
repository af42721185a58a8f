//! The agents folder is the deployment interface: drop a component in and it is offered,
//! break it and the last good version keeps serving, replace it and new jobs switch while
//! jobs already accepted finish on the version they were accepted with, remove it and it is gone.

use serde_json::{Value, json};

use crate::harness::{Host, component, spin_policy, with_version};

fn agent<'a>(listing: &'a Value, name: &str) -> Option<&'a Value> {
    listing["agents"].as_array()?.iter().find(|a| a["name"] == name)
}

fn error_for<'a>(listing: &'a Value, file: &str) -> Option<&'a Value> {
    listing["errors"].as_array()?.iter().find(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_dropped_into_running_host_becomes_invocable_over_http_and_cli() {
    let host = Host::start(&["counter"]);
    let (_, before) = host.get("/v1/agents").await;
    assert!(agent(&before, "echo").is_none(), "echo is not there yet: {before}");

    std::fs::copy(component("echo"), host.agents_dir().join("echo.wasm")).unwrap();
    let listing = host.wait_agents("offer the dropped echo", |l| agent(l, "echo").is_some()).await;
    let echo = agent(&listing, "echo").unwrap();
    assert_eq!(echo["latest"], "0.1.0");
    assert_eq!(echo["versions"][0]["file"], "echo.wasm");
    assert_eq!(echo["versions"][0]["scopes"], json!(["log"]));
    assert_eq!(echo["versions"][0]["sha256"].as_str().unwrap().len(), 64);

    let job = host.run("echo", json!({"dropped": true}), None).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output"], json!({"echo": {"dropped": true}}));

    let out = host.cli(&["invoke", "echo", "--input", r#"{"via":"cli"}"#]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(printed, json!({"echo": {"via": "cli"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wasm_is_reported_and_ignored_and_the_last_good_version_keeps_working() {
    let host = Host::start(&["echo", "counter"]);

    // A new file that is not a component at all.
    host.drop_agent_bytes("bad.wasm", b"this is not webassembly \x00\x01\x02");
    let listing = host.wait_agents("report bad.wasm", |l| error_for(l, "bad.wasm").is_some()).await;
    let error = error_for(&listing, "bad.wasm").unwrap();
    assert!(!error["error"].as_str().unwrap().is_empty(), "{error}");
    assert!(
        agent(&listing, "echo").is_some() && agent(&listing, "counter").is_some(),
        "other agents unaffected: {listing}"
    );
    let job = host.run("echo", json!(1), None).await;
    assert_eq!(job["status"], "completed", "{job}");

    // A good agent's file overwritten with garbage: reported, and the loaded version stays.
    let (_, before) = host.get("/v1/agents").await;
    let sha_before = agent(&before, "counter").unwrap()["versions"][0]["sha256"].clone();
    host.drop_agent_bytes("counter.wasm", b"\x00asm garbage garbage garbage");
    let listing = host.wait_agents("report the broken counter.wasm", |l| error_for(l, "counter.wasm").is_some()).await;
    let counter = agent(&listing, "counter").expect("the last good counter is still offered");
    assert_eq!(counter["versions"][0]["sha256"], sha_before);
    let job = host.run("counter", json!({"key": "survivor"}), None).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output"], json!({"key": "survivor", "value": 1}));
    let job = host.run("echo", json!(2), None).await;
    assert_eq!(job["status"], "completed", "{job}");

    // Fixing the file clears the error.
    host.drop_agent_bytes("counter.wasm", &std::fs::read(component("counter")).unwrap());
    host.wait_agents("forget the counter.wasm error", |l| {
        error_for(l, "counter.wasm").is_none() && agent(l, "counter").is_some()
    })
    .await;
}

/// `spin` never finishes, so "a running job finishes on the old version" is shown with a job
/// *accepted* on the old version (queued behind a spin in the single job slot), plus a running
/// spin that keeps running on its old version after its file is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_agent_serves_new_jobs_while_accepted_jobs_finish_on_the_old_version() {
    let host = Host::start_with_policy(&["echo", "spin"], Some(&spin_policy("[server]\nmax_concurrent_jobs = 1\n")));

    let spin = host.submit("spin", json!(null), Some(json!({"limits": {"deadline_ms": 60000}}))).await;
    host.wait_status(&spin, "running").await;
    let old_echo = host.submit("echo", json!({"on": "old"}), None).await;
    assert_eq!(host.job(&old_echo).await["status"], "queued");

    host.drop_agent_bytes("echo.wasm", &with_version("echo", "0.1.0", "0.2.0"));
    host.drop_agent_bytes("spin.wasm", &with_version("spin", "0.1.0", "0.2.0"));
    let listing = host
        .wait_agents("switch echo and spin to 0.2.0", |l| {
            agent(l, "echo").is_some_and(|a| a["latest"] == "0.2.0")
                && agent(l, "spin").is_some_and(|a| a["latest"] == "0.2.0")
        })
        .await;
    // The file now provides 0.2.0 only.
    let versions: Vec<&Value> =
        agent(&listing, "echo").unwrap()["versions"].as_array().unwrap().iter().map(|v| &v["version"]).collect();
    assert_eq!(versions, vec!["0.2.0"], "{listing}");

    let new_echo = host.submit("echo", json!({"on": "new"}), None).await;
    assert_eq!(host.job(&new_echo).await["agent_version"], "0.2.0");
    let running = host.job(&spin).await;
    assert_eq!(running["status"], "running", "the running spin is untouched by the swap: {running}");
    assert_eq!(running["agent_version"], "0.1.0");

    let (status, cancelled) = host.post(&format!("/v1/jobs/{spin}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    let spin_job = host.wait_done(&spin).await;
    assert_eq!(spin_job["status"], "cancelled", "{spin_job}");

    let old = host.wait_done(&old_echo).await;
    assert_eq!(old["status"], "completed", "{old}");
    assert_eq!(old["agent_version"], "0.1.0");
    assert_eq!(old["output"], json!({"echo": {"on": "old"}}));
    let new = host.wait_done(&new_echo).await;
    assert_eq!(new["status"], "completed", "{new}");
    assert_eq!(new["agent_version"], "0.2.0");
    assert_eq!(new["output"], json!({"echo": {"on": "new"}}));

    let (status, body) = host.post("/v1/jobs", &json!({"agent": "echo@0.1.0", "input": 1})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_version")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_version_in_its_own_file_is_offered_alongside_and_a_bare_name_picks_the_newest() {
    let host = Host::start(&["echo"]);
    host.drop_agent_bytes("echo-next.wasm", &with_version("echo", "0.1.0", "0.3.0"));
    host.wait_agents("offer echo 0.3.0 next to 0.1.0", |l| {
        agent(l, "echo")
            .is_some_and(|a| a["latest"] == "0.3.0" && a["versions"].as_array().is_some_and(|v| v.len() == 2))
    })
    .await;
    let newest = host.run("echo", json!(1), None).await;
    assert_eq!(newest["agent_version"], "0.3.0");
    let pinned = host.run("echo@0.1.0", json!(1), None).await;
    assert_eq!(pinned["agent_version"], "0.1.0");
    assert_eq!(pinned["status"], "completed", "{pinned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_agent_file_stops_being_offered() {
    let host = Host::start(&["echo", "counter"]);
    assert_eq!(host.run("echo", json!(1), None).await["status"], "completed");

    std::fs::remove_file(host.agents_dir().join("echo.wasm")).unwrap();
    let listing = host.wait_agents("drop echo", |l| agent(l, "echo").is_none()).await;
    assert!(agent(&listing, "counter").is_some(), "{listing}");

    let (status, body) = host.post("/v1/jobs", &json!({"agent": "echo", "input": 1})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_show_host_paths_only_to_operators() {
    let policy = r#"
[[principals]]
name = "ops"
token = "ops-token"
operator = true

[[principals]]
name = "dev"
token = "dev-token"
"#;
    let host = Host::start_with_policy(&["echo"], Some(policy));
    host.drop_agent_bytes("bad.wasm", b"this is not webassembly");
    let dir = host.agents_dir().display().to_string();
    let listed = |token: &'static str| {
        let host = &host;
        async move {
            crate::harness::eventually("bad.wasm reported", || async {
                let answer = host.request(reqwest::Method::GET, "/v1/agents", Some(token), None).await;
                error_for(&answer.body, "bad.wasm").cloned()
            })
            .await
        }
    };
    let ops = listed("ops-token").await;
    assert!(ops["file"].as_str().unwrap().starts_with(&dir), "an operator sees the path: {ops}");

    let dev = listed("dev-token").await;
    assert_eq!(dev["file"], "bad.wasm", "{dev}");
    assert!(!dev.to_string().contains(&dir), "no host path for a non-operator: {dev}");
    assert!(!dev["error"].as_str().unwrap().is_empty(), "{dev}");
}
