//! Fake-server tests of the CLI client. Drives the `corral` client subcommands as a user would (the real binary, its stdout, stderr
//! and exit code) against the fake server in `support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Conn, End, serve, standard};

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn corral_with_env(server: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.args(args).env("CORRAL_SERVER", server).env_remove("CORRAL_TOKEN").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn corral(server: &str, args: &[&str]) -> Run {
    corral_with_env(server, args, &[]).await
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn seqs(stdout: &str) -> Vec<u64> {
    json_lines(stdout).iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

// ---- invoke ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn invoke_prints_output_when_job_completes_within_wait() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["invoke", "echo@0.1.0", "--input", r#"{"name": "x"}"#]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), json!({"greeting": "hello"}));
    let seen = &state.lock().unwrap().seen;
    assert_eq!(seen.submits[0].0, json!({"agent": "echo@0.1.0", "input": {"name": "x"}}));
    assert_eq!(seen.submits[0].1.as_deref(), Some("30000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_exits_1_when_job_failed() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "fail"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.trim(), "error: job job-failed failed: agent trapped: unreachable (trap)");
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_json_prints_the_whole_job_even_when_it_failed() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "fail", "--json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let job: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "trap");
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_prints_job_id_and_exits_0_when_still_running_after_wait() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["invoke", "slow", "--wait", "10"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "job job-running is running");
    assert!(run.stderr.contains("corral events job-running"), "{run:?}");
    assert_eq!(state.lock().unwrap().seen.submits[0].1.as_deref(), Some("10"));
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_reads_input_and_lease_from_files_and_sends_idempotency_key() {
    let (url, state) = serve(standard()).await;
    let dir = std::env::temp_dir().join(format!("corral-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input.json");
    let lease = dir.join("lease.json");
    std::fs::write(&input, r#"[1, 2, 3]"#).unwrap();
    std::fs::write(&lease, r#"{"grants": ["log"]}"#).unwrap();
    let input_arg = format!("@{}", input.display());
    let lease_arg = format!("--lease=@{}", lease.display());
    let run = corral(&url, &["invoke", "echo", "-i", &input_arg, &lease_arg, "--idempotency-key", "k-1"]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        state.lock().unwrap().seen.submits[0].0,
        json!({"agent": "echo", "input": [1, 2, 3], "lease": {"grants": ["log"]}, "idempotency_key": "k-1"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_rejects_input_that_is_not_json_with_exit_2_before_any_request() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["invoke", "echo", "--input", "hello"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.starts_with("error: --input is not valid JSON"), "{run:?}");
    assert!(run.stderr.contains(r#"--input '"hello"'"#), "{run:?}");
    assert!(state.lock().unwrap().seen.submits.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_follow_prints_events_as_lines_then_the_output() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["invoke", "echo", "--follow"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "[job] job-echo echo@0.1.0\n[state] queued\n[state] running\n[info] starting\n[progress] 1/2 half\n\
         denied kv.write counter/x: no kv.write grant\npartial text\n[state] completed\n\
         {\n  \"greeting\": \"hello\"\n}\n"
    );
    assert_eq!(state.lock().unwrap().seen.submits[0].1, None, "--follow submits without waiting");
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_follow_json_prints_one_event_per_line() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "echo", "--follow", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(seqs(&run.stdout), (1..=8).collect::<Vec<_>>());
    let last = json_lines(&run.stdout).pop().unwrap();
    assert_eq!(last["data"]["output"], json!({"greeting": "hello"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_follow_exits_1_when_job_fails() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "fail", "-f"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("[error] about to trap\n[state] failed: agent trapped: unreachable (trap)\n"),
        "{run:?}"
    );
    assert!(run.stderr.contains("error: job job-failed failed"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_follow_and_wait_together_is_a_usage_error() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "echo", "--follow", "--wait", "5"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

// ---- errors ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_error_prints_message_and_code_and_exits_2() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["invoke", "nope"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim(), "error: no agent named 'nope' is registered (agent_not_found)");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_exits_2_and_asks_whether_corral_serve_runs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = corral(&url, &["agents"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim(), format!("error: cannot reach corral at {url} — is `corral serve` running?"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_sent_as_bearer_and_a_401_suggests_setting_it() {
    let mut fake = standard();
    fake.token = Some("s3cret".to_owned());
    let (url, state) = serve(fake).await;

    let denied = corral(&url, &["agents"]).await;
    assert_eq!(denied.code, 2, "{denied:?}");
    assert!(denied.stderr.contains("error: missing or invalid bearer token (unauthorized)"), "{denied:?}");
    assert!(denied.stderr.contains("CORRAL_TOKEN"), "{denied:?}");

    let allowed = corral_with_env(&url, &["agents"], &[("CORRAL_TOKEN", "s3cret")]).await;
    assert_eq!(allowed.code, 0, "{allowed:?}");
    let flag = corral(&url, &["agents", "--token", "s3cret"]).await;
    assert_eq!(flag.code, 0, "{flag:?}");
    let auths = &state.lock().unwrap().seen.authorizations;
    assert_eq!(auths[1..], [Some("Bearer s3cret".to_owned()), Some("Bearer s3cret".to_owned())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_flag_overrides_the_environment() {
    let (url, _) = serve(standard()).await;
    let run =
        corral_with_env(&url, &["--server", &url, "job", "job-echo"], &[("CORRAL_SERVER", "http://127.0.0.1:1")]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_url_that_is_not_http_is_a_usage_error() {
    let run = corral("ftp://example", &["agents"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("'ftp://example' is not a usable server URL"), "{run:?}");
}

// ---- agents, jobs, job, cancel ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn agents_prints_a_table_with_the_latest_versions_scopes() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["agents"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "NAME   LATEST  VERSIONS     SCOPES       DESCRIPTION\n\
         echo   0.2.0   0.1.0,0.2.0  log,kv.read  Returns its input\n\
         fetch  1.0.0   1.0.0        net.fetch    Fetches a URL\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_passes_filters_and_prints_a_table_and_the_next_cursor() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["jobs", "--status", "completed", "--limit", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ID         AGENT        STATUS     CREATED\n\
         job-echo   echo@0.1.0   completed  2025-06-01T12:00:00Z\n\
         job-flaky  flaky@0.1.0  completed  2025-06-01T12:00:00Z\n"
    );
    assert_eq!(run.stderr.trim(), "more: corral jobs --cursor cursor-2");
    let q = &state.lock().unwrap().seen.list_queries[0];
    assert_eq!(q.get("status").map(String::as_str), Some("completed"));
    assert_eq!(q.get("limit").map(String::as_str), Some("2"));
    assert_eq!(q.get("agent"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_rejects_an_unknown_status_before_asking_the_server() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["jobs", "--status", "done"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(state.lock().unwrap().seen.list_queries.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_json_prints_the_raw_page() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["jobs", "--agent", "echo", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let page: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], "job-echo");
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn job_prints_the_job_json_with_unknown_fields_kept() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["job", "job-echo"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let job: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["output"], json!({"greeting": "hello"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_that_does_not_exist_exits_2() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["job", "missing"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim(), "error: no job with id 'missing' (job_not_found)");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_running_job_reports_it_cancelled() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["cancel", "job-running"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "job job-running cancelled");
    assert_eq!(state.lock().unwrap().seen.cancels, ["job-running"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_finished_job_exits_2_with_the_conflict_message() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["cancel", "job-echo"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim(), "error: job 'job-echo' has already finished (job_finished)");
}

// ---- events ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn events_resume_after_disconnect_without_duplicates() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["events", "job-flaky", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(seqs(&run.stdout), [1, 2, 3, 4, 5, 6]);
    // Dropped after 3, after 4 (mid-way through 5), closed early after 5.
    assert_eq!(
        state.lock().unwrap().seen.resumes["job-flaky"],
        [None, Some("3".to_owned()), Some("4".to_owned()), Some("5".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_drop_replays_when_the_server_ignores_last_event_id() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["events", "job-replay"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "[info] line 1\n[info] line 2\n[info] line 3\n[info] line 4\n[info] line 5\n[state] completed\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_after_seq_starts_with_last_event_id() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["events", "job-echo", "--after", "6", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(seqs(&run.stdout), [7, 8]);
    assert_eq!(state.lock().unwrap().seen.resumes["job-echo"], [Some("6".to_owned())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_a_finished_job_after_its_last_seq_end_without_waiting() {
    let (url, _) = serve(standard()).await;
    let start = Instant::now();
    let run = corral(&url, &["events", "job-echo", "--after", "8"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_exit_1_when_the_followed_job_failed() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["events", "job-failed"]).await;
    assert_eq!(run.code, 1, "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_no_follow_prints_the_backlog_of_a_running_job_and_exits_0() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["events", "job-running", "--no-follow"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "[state] queued\n[state] running\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_no_follow_of_a_failed_job_still_exits_0() {
    let (url, _) = serve(standard()).await;
    let run = corral(&url, &["events", "job-failed", "--no-follow"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("[state] failed: agent trapped: unreachable (trap)\n"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_give_up_after_bounded_reconnects_when_the_stream_keeps_closing() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["events", "job-lost"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("lost the event stream for job job-lost after 5 reconnects"), "{run:?}");
    assert_eq!(state.lock().unwrap().seen.resumes["job-lost"].len(), 6, "one connection and 5 retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_an_unknown_job_exit_2_without_retrying() {
    let (url, state) = serve(standard()).await;
    let run = corral(&url, &["events", "missing"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim(), "error: no job with id 'missing' (job_not_found)");
    assert_eq!(state.lock().unwrap().seen.resumes["missing"].len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_follow_survives_a_dropped_stream() {
    let mut fake = standard();
    // The flaky job's events, reached through `invoke`.
    fake.agents.insert("echo".to_owned(), "job-flaky".to_owned());
    let (url, _) = serve(fake).await;
    let run = corral(&url, &["invoke", "echo", "--follow"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "[job] job-flaky flaky@0.1.0\n[info] line 1\n[info] line 2\n[info] line 3\n[info] line 4\n\
         [info] line 5\n[state] completed\n6\n"
    );
}

#[allow(dead_code)]
fn _uses(_: Conn, _: End) {}

#[test]
fn identity_is_made_once_in_the_data_folder_and_prints_only_the_public_half() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["identity", "--json", "--data"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert_eq!(first, second, "the same identity on every run");
    let shown: Value = serde_json::from_str(&first).unwrap();
    assert!(shown["agent_id"].as_str().unwrap().starts_with("corral-"));
    let seed = std::fs::read_to_string(dir.path().join("identity.key")).unwrap();
    assert!(!first.contains(seed.trim()), "the private key is never printed");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("identity.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
