//! Starts real `corral serve` processes for the end-to-end tests: each on a free loopback
//! port (`--listen 127.0.0.1:0`, the port read back from its stdout), with its own temp
//! agents and data folders, killed by pid when the test ends (also on panic).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A built agent component: examples in `agents/`, hostile ones in `target/test-agents/`.
pub fn component(name: &str) -> PathBuf {
    let example = repo().join("agents").join(format!("{name}.wasm"));
    if example.is_file() {
        return example;
    }
    let hostile = repo().join("target/test-agents").join(format!("{name}.wasm"));
    assert!(
        hostile.is_file(),
        "agent component {name}.wasm not found in agents/ or target/test-agents/ — run `./dev test`, which builds them"
    );
    hostile
}

/// A running host.
pub struct Host {
    child: Option<Child>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub policy: Option<String>,
    pub client: reqwest::Client,
    pub token: Option<String>,
    /// `host:port` of the SW4RM gRPC listener, for hosts started with [`Host::start_grpc`].
    pub grpc: Option<String>,
    /// The ASP endpoint (`https://…/swarm`), for hosts whose policy sets `[swarm] listen`.
    pub swarm: Option<String>,
    /// `CORRAL_SECRETS_KEY` of the process ([`TEST_SECRETS_KEY`] unless a test changes it).
    pub secrets_key: Option<String>,
}

/// The secrets key every test host gets (64 hex characters).
pub const TEST_SECRETS_KEY: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";

impl Host {
    pub fn agents_dir(&self) -> PathBuf {
        self.dir.path().join("agents")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts a host with the named agents copied into its agents folder.
    pub fn start(agents: &[&str]) -> Host {
        Self::start_with_policy(agents, None)
    }

    pub fn start_with_policy(agents: &[&str], policy: Option<&str>) -> Host {
        Self::start_serving(agents, policy, false)
    }

    /// [`Host::start_with_policy`], also serving SW4RM over gRPC on a free port.
    pub fn start_grpc(agents: &[&str], policy: Option<&str>) -> Host {
        Self::start_serving(agents, policy, true)
    }

    fn start_serving(agents: &[&str], policy: Option<&str>, grpc: bool) -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agents")).unwrap();
        for name in agents {
            std::fs::copy(component(name), dir.path().join("agents").join(format!("{name}.wasm"))).unwrap();
        }
        let mut host = Host {
            child: None,
            url: String::new(),
            dir,
            policy: policy.map(str::to_string),
            client: reqwest::Client::new(),
            token: None,
            grpc: grpc.then(String::new),
            swarm: None,
            secrets_key: Some(TEST_SECRETS_KEY.to_owned()),
        };
        host.spawn();
        host
    }

    /// (Re)starts the process on the same folders.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--agents")
            .arg(self.agents_dir())
            .arg("--data")
            .arg(self.data_dir())
            .env("RUST_LOG", "info,corral=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.grpc.is_some() {
            cmd.arg("--grpc-listen").arg("127.0.0.1:0");
        }
        cmd.env_remove("CORRAL_SECRETS_KEY_FILE");
        match &self.secrets_key {
            Some(key) => cmd.env("CORRAL_SECRETS_KEY", key),
            None => cmd.env_remove("CORRAL_SECRETS_KEY"),
        };
        if let Some(policy) = &self.policy {
            let path = self.dir.path().join("policy.toml");
            std::fs::write(&path, policy).unwrap();
            cmd.arg("--policy").arg(path);
        }
        let mut child = cmd.spawn().expect("start corral");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log_path = self.dir.path().join(format!("host-{}.log", child.id()));
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(log, "{line}");
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        // Printed before the HTTP line, so set by the time that one arrives.
        let swarm = std::sync::Arc::new(std::sync::Mutex::new(None));
        let swarm_line = std::sync::Arc::clone(&swarm);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("corral gRPC listening on ") {
                    let _ = tx.send((true, addr.trim().to_string()));
                }
                if let Some(url) = line.strip_prefix("corral swarm listening on ") {
                    *swarm_line.lock().unwrap() = Some(url.trim().to_string());
                }
                if let Some(url) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send((false, url.trim().to_string()));
                }
            }
        });
        self.child = Some(child);
        // Both lines when gRPC was asked for, in whatever order they come.
        let (mut http, mut grpc) = (None, self.grpc.is_none());
        while http.is_none() || !grpc {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((true, addr)) => {
                    self.grpc = Some(addr);
                    grpc = true;
                }
                Ok((false, url)) => http = Some(url),
                Err(_) => panic!("corral did not start; its log:\n{}", self.logs()),
            }
        }
        self.url = http.unwrap_or_default();
        self.swarm = swarm.lock().unwrap().take();
    }

    /// Everything the host wrote to stderr so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("host-") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill").arg("-9").arg(child.id().to_string()).status().unwrap();
            assert!(status.success());
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("host running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        child.wait().unwrap()
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.authed(self.client.get(format!("{}{path}", self.url))).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.authed(self.client.post(format!("{}{path}", self.url))).json(body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits a job and waits up to 30 s for it to finish.
    pub async fn run(&self, agent: &str, input: Value, lease: Option<Value>) -> Value {
        let mut body = json!({ "agent": agent, "input": input });
        if let Some(lease) = lease {
            body["lease"] = lease;
        }
        let (status, job) = self.post("/v1/jobs?wait=30000", &body).await;
        assert!(status == 200 || status == 202, "submit failed: {status} {job}");
        self.wait_done(job["id"].as_str().unwrap()).await
    }

    /// Polls a job until it is terminal (bounded).
    pub async fn wait_done(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            let s = job["status"].as_str().unwrap_or_default();
            if !matches!(s, "queued" | "running") {
                return job;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "job {id} did not finish: {job}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `check` holds for the agents listing (bounded).
    pub async fn wait_agents(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (_, agents) = self.get("/v1/agents").await;
            if check(&agents) {
                return agents;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "agents never {what}: {agents}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All events of a finished job, read through the SSE endpoint.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        sse_events(&self.client, &self.url, id, self.token.as_deref(), None).await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a job's SSE stream to its end (the server closes it after the terminal state).
pub async fn sse_events(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    token: Option<&str>,
    last_event_id: Option<u64>,
) -> Vec<Value> {
    use futures::StreamExt;
    let mut rb = client.get(format!("{url}/v1/jobs/{id}/events"));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(last) = last_event_id {
        rb = rb.header("Last-Event-ID", last.to_string());
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), rb.send()).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let message: String = buf.drain(..end + 2).collect();
                for line in message.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        events.push(serde_json::from_str::<Value>(data.trim()).unwrap());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("event stream did not end");
    events
}

/// An HTTP answer: status, headers and the JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// `error.message` of an error answer.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

/// Fuel for agents that must be able to spin until their deadline or a cancel: the built-in
/// ceiling's 2·10¹⁰ units last only a few seconds of a tight loop.
pub const BIG_FUEL: u64 = 1_000_000_000_000_000;

/// A policy `[ceiling]` like the built-in one, with the given `net.fetch` patterns and fuel.
/// A policy's `[ceiling]` replaces the built-in one as a whole, so it is written out in full.
pub fn ceiling(net_fetch: &[&str], fuel: u64) -> String {
    ceiling_with_limits(net_fetch, fuel, 10_000)
}

/// [`ceiling`] with a host-call budget too.
pub fn ceiling_with_limits(net_fetch: &[&str], fuel: u64, max_host_calls: u64) -> String {
    let net = if net_fetch.is_empty() {
        String::new()
    } else {
        let patterns: Vec<String> = net_fetch.iter().map(|p| format!("{p:?}")).collect();
        format!("\"net.fetch\" = [{}]\n", patterns.join(", "))
    };
    format!(
        r#"
[ceiling.grants]
"log" = ["**"]
"events" = ["**"]
"kv.read" = ["**"]
"kv.write" = ["**"]
"agent.delegate" = ["**"]
"agent.send" = ["**"]
"topic.publish" = ["**"]
{net}
[ceiling.limits]
deadline_ms = 60000
memory_bytes = 67108864
fuel = {fuel}
max_host_calls = {max_host_calls}
net_bytes = 10485760
delegation_depth = 4
max_children = 16
"#
    )
}

/// The built-in ceiling plus `net.fetch` patterns.
pub fn ceiling_with_net_fetch(patterns: &[&str]) -> String {
    ceiling(patterns, 20_000_000_000)
}

/// A policy under which `spin` runs until its deadline or a cancel, plus `extra` TOML tables.
pub fn spin_policy(extra: &str) -> String {
    format!("{extra}\n{}", ceiling(&[], BIG_FUEL))
}

impl Host {
    /// Any request, with an explicit bearer token (or none), whatever `self.token` says.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut rb = self.client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Answer { status, headers, body: resp.json().await.unwrap_or(Value::Null) }
    }

    /// POSTs raw bytes as `application/json`.
    pub async fn post_raw(&self, path: &str, bytes: Vec<u8>) -> Answer {
        let resp = self
            .authed(self.client.post(format!("{}{path}", self.url)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Answer { status, headers, body: resp.json().await.unwrap_or(Value::Null) }
    }

    /// POST /v1/jobs with the full answer (status, headers, body).
    pub async fn submit_raw(&self, body: &Value) -> Answer {
        self.request(reqwest::Method::POST, "/v1/jobs", self.token.as_deref(), Some(body)).await
    }

    /// Submits a job without waiting; returns its id.
    pub async fn submit(&self, agent: &str, input: Value, lease: Option<Value>) -> String {
        let mut body = json!({ "agent": agent, "input": input });
        if let Some(lease) = lease {
            body["lease"] = lease;
        }
        let (status, job) = self.post("/v1/jobs", &body).await;
        assert!(status == 200 || status == 202, "submit of {agent} failed: {status} {job}\n{}", self.logs());
        job["id"].as_str().unwrap().to_string()
    }

    /// A job as it is now.
    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "GET job {id}: {job}");
        job
    }

    /// Polls a job until it has `status` (bounded); returns it.
    /// Waits (bounded) until the job is running again as the given attempt (after a restart).
    pub async fn wait_running_attempt(&self, id: &str, attempt: u32) -> Value {
        eventually(&format!("job {id} runs as attempt {attempt}"), || async {
            let job = self.job(id).await;
            (job["status"] == "running" && job["attempt"] == attempt).then_some(job)
        })
        .await
    }

    /// Starts an orchestrator that delegates to one endless `spin`; returns the parent's id
    /// and the running child job.
    pub async fn orchestrator_with_spinning_child(&self) -> (String, Value) {
        let parent = self
            .submit(
                "orchestrator",
                json!({"tasks": [{"agent": "spin", "input": null}]}),
                Some(json!({"limits": {"deadline_ms": 60000}})),
            )
            .await;
        let child = eventually("the orchestrator delegates to a running spin", || async {
            let (_, list) = self.get("/v1/jobs?agent=spin").await;
            list["jobs"].as_array().and_then(|jobs| {
                jobs.iter().find(|j| j["parent_id"] == parent.as_str() && j["status"] == "running").cloned()
            })
        })
        .await;
        (parent, child)
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            let now = job["status"].as_str().unwrap_or_default();
            assert!(
                matches!(now, "queued" | "running"),
                "job {id} ended {now} while waiting for {status}: {job}\n{}",
                self.logs()
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "job {id} never became {status}: {job}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the `corral` CLI against this host (`--server` set, plus `--token` when the host has one).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut all: Vec<String> = vec!["--server".into(), self.url.clone()];
        if let Some(t) = &self.token {
            all.push("--token".into());
            all.push(t.clone());
        }
        all.extend(args.iter().map(|a| (*a).to_string()));
        run_cli(all).await
    }

    /// The host's SQLite database, opened read-only.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir().join("corral.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// Copies a file into the agents folder the way a careful user does: write aside, then
    /// rename into place, so the host never sees half a file.
    pub fn drop_agent_bytes(&self, file: &str, bytes: &[u8]) {
        let tmp = self.agents_dir().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.agents_dir().join(file)).unwrap();
    }
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `corral` binary with `args` off the async runtime (bounded by a timeout).
pub async fn run_cli(args: Vec<String>) -> CliOutput {
    let task = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(&args)
            .stdin(Stdio::null())
            .env_remove("CORRAL_SERVER")
            .env_remove("CORRAL_TOKEN")
            .output()
            .expect("run corral");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    });
    tokio::time::timeout(Duration::from_secs(90), task).await.expect("corral CLI did not exit").unwrap()
}

/// Polls `check` until it returns `Some` (bounded at 30 s); panics naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The events of `kind` among `events`.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The bytes of a component with its manifest version replaced by one of the same length,
/// e.g. `0.1.0` → `0.2.0`: a genuinely new version of the same agent.
pub fn with_version(name: &str, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "same-length versions keep the component's section sizes valid");
    let bytes = std::fs::read(component(name)).unwrap();
    let needle = format!("\"version\":\"{from}\"").into_bytes();
    let replacement = format!("\"version\":\"{to}\"").into_bytes();
    let mut out = bytes.clone();
    let mut found = 0;
    let mut i = 0;
    while i + needle.len() <= out.len() {
        if out[i..i + needle.len()] == needle[..] {
            out[i..i + needle.len()].copy_from_slice(&replacement);
            found += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(found >= 1, "manifest of {name}.wasm has no {}", String::from_utf8_lossy(&needle));
    out
}
