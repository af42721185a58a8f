//! Secrets as handles, against a real host and a local HTTP server that echoes every request
//! back (in its body and in a response header): the server gets the credential, the agent
//! never does, a destination the secret does not allow gets nothing, and the value is nowhere
//! the host writes.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{CliOutput, Host, ceiling_with_net_fetch, of_kind};

const VALUE: &str = "sk-live-4f9c2e1d8b7a6053";
const ROTATED: &str = "sk-live-rotated-00d1e2f3";

/// What the echo server received: one header map per request.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A loopback server that answers any request with `{"headers": {...}, "body": "..."}` of that
/// request, and repeats its `authorization` and `x-api-key` in response headers.
async fn echo_server() -> (u16, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let record = Arc::clone(&record);
        async move {
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            record.lock().unwrap().push(headers.clone());
            let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
            let echo = json!({
                "headers": headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "body": String::from_utf8_lossy(&body),
            });
            let mut response = axum::response::Response::new(axum::body::Body::from(echo.to_string()));
            for (name, value) in headers {
                if name == "authorization" || name == "x-api-key" {
                    response.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()).unwrap(),
                        axum::http::HeaderValue::from_str(&value).unwrap(),
                    );
                }
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

/// A policy letting jobs fetch loopback (the operator names `127.0.0.1`) and use `secrets`.
fn policy(secrets: &[&str]) -> String {
    let names: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    ceiling_with_net_fetch(&["http://127.0.0.1:*/**"])
        .replace("[ceiling.limits]", &format!("\"secret.use\" = [{}]\n[ceiling.limits]", names.join(", ")))
}

async fn set_secret(host: &Host, name: &str, body: Value) {
    let answer = host.request(reqwest::Method::PUT, &format!("/v1/secrets/{name}"), None, Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.body.to_string().contains(body["value"].as_str().unwrap()), "{}", answer.body);
}

fn header<'a>(seen: &'a [(String, String)], name: &str) -> Option<&'a str> {
    seen.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The forms of `value` that must never show up: itself and its base64 encodings.
fn forms(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![value.to_owned(), STANDARD.encode(value), URL_SAFE_NO_PAD.encode(value)]
}

fn assert_absent(what: &str, haystack: &[u8], value: &str) {
    for form in forms(value) {
        assert!(memchr::memmem::find(haystack, form.as_bytes()).is_none(), "{what} contains the secret ({form})");
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Runs the CLI against `host` with `stdin` piped in.
fn cli_with_stdin(host: &Host, args: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("--server")
        .arg(&host.url)
        .args(args)
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_secret_reaches_the_server_and_never_the_agent_or_the_hosts_records() {
    let (port, seen) = echo_server().await;
    let host = Host::start_with_policy(&["fetch"], Some(&policy(&["api", "key", "login"])));
    let allow = format!("http://127.0.0.1:{port}/**");
    set_secret(&host, "api", json!({"value": VALUE, "allow": [allow], "inject": "bearer"})).await;
    set_secret(&host, "key", json!({"value": "k-7731-xyz", "allow": [allow], "inject": {"header": "X-Api-Key"}})).await;
    set_secret(&host, "login", json!({"value": "robot:pa55-w0rd", "allow": [allow], "inject": "basic"})).await;

    let url = format!("http://127.0.0.1:{port}/v1/echo");
    let job = host
        .run("fetch", json!({"url": url, "method": "POST", "body": "hello", "secrets": ["api", "key"]}), None)
        .await;
    assert_eq!(job["status"], "completed", "{job}");
    let basic = host.run("fetch", json!({"url": url, "secrets": ["login"]}), None).await;
    assert_eq!(basic["status"], "completed", "{basic}");

    // The server got the credentials, as configured.
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(header(&requests[0], "authorization"), Some(format!("Bearer {VALUE}").as_str()));
    assert_eq!(header(&requests[0], "x-api-key"), Some("k-7731-xyz"));
    let encoded = base64::engine::general_purpose::STANDARD.encode("robot:pa55-w0rd");
    assert_eq!(header(&requests[1], "authorization"), Some(format!("Basic {encoded}").as_str()));

    // The agent saw the echo with every value replaced, in the body and in the headers.
    let output = &job["output"];
    assert_eq!(output["headers"]["x-echo-authorization"], "Bearer [redacted]", "{output}");
    assert_eq!(output["headers"]["x-echo-x-api-key"], "[redacted]", "{output}");
    let echoed: Value = serde_json::from_str(output["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["headers"]["authorization"], "Bearer [redacted]", "{echoed}");
    assert_eq!(echoed["body"], "hello");
    assert_eq!(basic["output"]["headers"]["x-echo-authorization"], "Basic [redacted]", "{basic}");

    // The uses were decided and audited by name.
    let events = host.events(job["id"].as_str().unwrap()).await;
    let uses: Vec<&Value> =
        of_kind(&events, "capability").into_iter().filter(|e| e["data"]["scope"] == "secret.use").collect();
    assert_eq!(uses.len(), 2, "{events:?}");
    assert!(uses.iter().all(|e| e["data"]["decision"] == "allow"), "{uses:?}");

    // Nowhere the host writes, nothing it answers: no value, no base64 of one.
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for id in [&job["id"], &basic["id"]] {
        let id = id.as_str().unwrap();
        let (_, view) = host.get(&format!("/v1/jobs/{id}")).await;
        records.push((format!("GET /v1/jobs/{id}"), view.to_string().into_bytes()));
        records.push((format!("events of {id}"), serde_json::to_vec(&host.events(id).await).unwrap()));
    }
    let (_, list) = host.get("/v1/jobs").await;
    records.push(("GET /v1/jobs".into(), list.to_string().into_bytes()));
    let (status, secrets) = host.get("/v1/secrets").await;
    assert_eq!(status, 200);
    assert_eq!(secrets["secrets"].as_array().unwrap().len(), 3, "{secrets}");
    records.push(("GET /v1/secrets".into(), secrets.to_string().into_bytes()));
    let listed = host.cli(&["secret", "list"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains("api") && listed.stdout.contains("header X-Api-Key"), "{}", listed.stdout);
    records.push(("corral secret list".into(), listed.stdout.into_bytes()));
    let audit: Vec<String> = {
        let db = host.db();
        let mut stmt = db.prepare("SELECT scope || ' ' || target || ' ' || coalesce(reason, '') FROM audit").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert!(audit.iter().any(|a| a.starts_with("secret.use api")), "{audit:?}");
    records.push(("the audit table".into(), audit.join("\n").into_bytes()));
    records.push(("the host's log".into(), host.logs().into_bytes()));
    for file in files(&host.data_dir()) {
        records.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    assert!(records.iter().any(|(what, _)| what.ends_with("secrets.enc")), "the secrets are kept on disk (sealed)");
    for (what, bytes) in &records {
        for value in [VALUE, "k-7731-xyz", "robot:pa55-w0rd"] {
            assert_absent(what, bytes, value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_outside_its_destinations_or_without_secret_use_is_denied_and_nothing_is_sent() {
    let (port, seen) = echo_server().await;
    let host = Host::start_with_policy(&["fetch"], Some(&policy(&["api"])));
    let allow = format!("http://127.0.0.1:{port}/allowed/**");
    set_secret(&host, "api", json!({"value": VALUE, "allow": [allow], "inject": "bearer"})).await;

    // The job may fetch the URL (net.fetch allows all of loopback), but the secret may not go there.
    let elsewhere = format!("http://127.0.0.1:{port}/other");
    let job = host.run("fetch", json!({"url": elsewhere, "secrets": ["api"]}), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "denied", "{job}");
    assert_eq!(job["error"]["scope"], "secret.use", "{job}");
    assert_eq!(job["error"]["target"], "api", "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&elsewhere) && message.contains("may not be sent to"), "{job}");

    // Without `secret.use` in the job's lease (the request leaves it out): denied before anything.
    let allowed = format!("http://127.0.0.1:{port}/allowed/x");
    let narrowed = json!({"grants": {"log": ["**"], "net.fetch": ["http://127.0.0.1:*/**"]}});
    let job = host.run("fetch", json!({"url": allowed, "secrets": ["api"]}), Some(narrowed)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["scope"], "secret.use", "{job}");

    // A secret the ceiling does not grant, and one that does not exist.
    let policy_denied = host.run("fetch", json!({"url": allowed, "secrets": ["other"]}), None).await;
    assert_eq!(policy_denied["error"]["scope"], "secret.use", "{policy_denied}");

    // The agent may not set the header the secret sets, nor ask for a compressed echo.
    let spoof = host
        .run("fetch", json!({"url": allowed, "secrets": ["api"], "headers": {"Authorization": "Bearer mine"}}), None)
        .await;
    assert_eq!(spoof["error"]["code"], "invalid_input", "{spoof}");
    let gzip = host
        .run("fetch", json!({"url": allowed, "secrets": ["api"], "headers": {"Accept-Encoding": "gzip"}}), None)
        .await;
    assert_eq!(gzip["error"]["code"], "invalid_input", "{gzip}");

    assert!(seen.lock().unwrap().is_empty(), "the server received a request");
    let db = host.db();
    let denials: i64 = db
        .query_row("SELECT count(*) FROM audit WHERE scope = 'secret.use' AND decision = 'deny'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(denials, 3, "each secret.use denial is audited");

    // The allowed destination works.
    let ok = host.run("fetch", json!({"url": allowed, "secrets": ["api"]}), None).await;
    assert_eq!(ok["status"], "completed", "{ok}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_used_by_the_next_job_and_survives_a_kill_9() {
    let (port, seen) = echo_server().await;
    let mut host = Host::start_with_policy(&["fetch"], Some(&policy(&["api"])));
    let allow = format!("http://127.0.0.1:{port}/**");
    let url = format!("http://127.0.0.1:{port}/");
    let set = cli_with_stdin(&host, &["secret", "set", "api", "--allow", &allow, "--bearer"], &format!("{VALUE}\n"));
    assert_eq!(set.code, 0, "{set:?}");
    assert!(!set.stdout.contains(VALUE), "{}", set.stdout);
    let pid = host.pid();

    assert_eq!(host.run("fetch", json!({"url": url, "secrets": ["api"]}), None).await["status"], "completed");
    let value_file = host.dir.path().join("rotated.txt");
    std::fs::write(&value_file, format!("{ROTATED}\n")).unwrap();
    let rotate = host
        .cli(&["secret", "set", "api", "--allow", &allow, "--bearer", "--value-file", value_file.to_str().unwrap()])
        .await;
    assert_eq!(rotate.code, 0, "{rotate:?}");
    assert_eq!(host.run("fetch", json!({"url": url, "secrets": ["api"]}), None).await["status"], "completed");
    assert_eq!(host.pid(), pid, "no restart");

    host.kill_9();
    host.spawn();
    assert_eq!(host.run("fetch", json!({"url": url, "secrets": ["api"]}), None).await["status"], "completed");

    let sent: Vec<String> =
        seen.lock().unwrap().iter().map(|h| header(h, "authorization").unwrap_or_default().to_owned()).collect();
    assert_eq!(sent, [format!("Bearer {VALUE}"), format!("Bearer {ROTATED}"), format!("Bearer {ROTATED}")]);

    let removed = host.cli(&["secret", "rm", "api"]).await;
    assert_eq!(removed.code, 0, "{removed:?}");
    let gone = host.run("fetch", json!({"url": url, "secrets": ["api"]}), None).await;
    assert_eq!(gone["error"]["scope"], "secret.use", "{gone}");
    assert!(gone["error"]["message"].as_str().unwrap_or_default().contains("no secret named 'api'"), "{gone}");
    assert_eq!(seen.lock().unwrap().len(), 3, "nothing sent once removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_manage_secrets_and_a_host_without_a_key_has_none() {
    let policy = format!(
        "{}\n[[principals]]\nname = \"root\"\ntoken = \"root-token\"\noperator = true\n\n[[principals]]\nname = \"dev\"\ntoken = \"dev-token\"\n",
        policy(&["api"])
    );
    let mut host = Host::start_with_policy(&["fetch"], Some(&policy));
    let body = json!({"value": VALUE, "allow": ["https://api.example.com/**"], "inject": "bearer"});
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/secrets", None),
        (reqwest::Method::PUT, "/v1/secrets/api", Some(&body)),
        (reqwest::Method::DELETE, "/v1/secrets/api", None),
    ] {
        let answer = host.request(method.clone(), path, Some("dev-token"), body).await;
        assert_eq!((answer.status, answer.code()), (403, "operator_only"), "{method} {path}: {}", answer.body);
    }
    let set = host.request(reqwest::Method::PUT, "/v1/secrets/api", Some("root-token"), Some(&body)).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["name"], "api");
    assert!(set.body.get("value").is_none(), "{}", set.body);

    // A body that is not a secret is refused without quoting it back.
    let bad = json!({"value": VALUE, "allow": "not-a-list", "inject": VALUE});
    let answer = host.request(reqwest::Method::PUT, "/v1/secrets/api", Some("root-token"), Some(&bad)).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_secret"), "{}", answer.body);
    assert!(!answer.body.to_string().contains(VALUE), "{}", answer.body);

    // Restarted without the key: the sealed secrets cannot be used, and none can be set.
    host.secrets_key = None;
    host.terminate();
    host.spawn();
    let listed = host.request(reqwest::Method::GET, "/v1/secrets", Some("root-token"), None).await;
    assert_eq!(listed.body["secrets"], json!([]), "{}", listed.body);
    let answer = host.request(reqwest::Method::PUT, "/v1/secrets/api", Some("root-token"), Some(&body)).await;
    assert_eq!((answer.status, answer.code()), (409, "secrets_disabled"), "{}", answer.body);
    assert!(host.logs().contains("no key is configured"), "the operator is told");
}

/// The README's tour of secrets, as written: examples/secrets/policy.toml, the demo API, the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_secrets_tour_calls_the_demo_api_with_a_key_the_agent_never_sees() {
    use std::io::BufRead as _;
    let mut api = KillOnDrop(
        Command::new("python3")
            .arg(crate::harness::repo().join("examples/secrets/demo_api.py"))
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the demo API"),
    );
    let mut line = String::new();
    std::io::BufReader::new(api.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let policy = std::fs::read_to_string(crate::harness::repo().join("examples/secrets/policy.toml")).unwrap();
    let host = Host::start_with_policy(&["fetch"], Some(&policy.replace("8080", &port.to_string())));

    let allow = format!("http://127.0.0.1:{port}/allowed/**");
    let set = cli_with_stdin(&host, &["secret", "set", "demo-api", "--allow", &allow, "--bearer"], "demo-token-123");
    assert_eq!(set.code, 0, "{set:?}");
    let me = format!(r#"{{"url": "http://127.0.0.1:{port}/allowed/me", "secrets": ["demo-api"]}}"#);
    let called = host.cli(&["invoke", "fetch", "--input", &me]).await;
    assert_eq!(called.code, 0, "{called:?}");
    let output: Value = serde_json::from_str(&called.stdout).unwrap();
    assert_eq!(output["status"], 200, "{output}");
    let body: Value = serde_json::from_str(output["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"user": "demo", "you_sent": "Bearer [redacted]"}));

    let anonymous = format!(r#"{{"url": "http://127.0.0.1:{port}/allowed/me"}}"#);
    let refused = host.cli(&["invoke", "fetch", "--input", &anonymous]).await;
    assert_eq!(serde_json::from_str::<Value>(&refused.stdout).unwrap()["status"], 401, "{refused:?}");
    let elsewhere = format!(r#"{{"url": "http://127.0.0.1:{port}/other", "secrets": ["demo-api"]}}"#);
    let denied = host.cli(&["invoke", "fetch", "--input", &elsewhere]).await;
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(denied.stderr.contains("secret.use"), "{}", denied.stderr);
}

/// A child process that ends with the test, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
