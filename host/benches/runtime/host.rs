//! Real `corral serve` processes: their folders (agents, data, policy) under the bench's work
//! dir on the repository's disk, start-up read from the `corral listening on` line, RSS read
//! from `/proc/PID/status`, SIGTERM to stop. A host still running when dropped is killed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::{Load, Request};

/// How long a host may take to print its listening line (a cold start compiles agents).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The bench policy: room for thousands of concurrent jobs and instances, the built-in
/// grants, loopback egress to `fetch_port` (granted as an IP literal, which is what lets a
/// job reach a non-public address), and a deadline long enough for parked jobs.
pub fn policy(fetch_port: Option<u16>) -> String {
    let net = fetch_port.map(|p| format!("\"net.fetch\" = [\"http://127.0.0.1:{p}/**\"]\n")).unwrap_or_default();
    format!(
        r#"[server]
max_concurrent_jobs = 12000

[engine]
max_instances = 12000

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
deadline_ms = 600000

[messages]
# The bench measures how fast the consumer side works off what producers send; producers are
# not to be refused for running ahead of it.
inbox_capacity = 10000000
"#
    )
}

/// The folders of one host.
#[derive(Debug, Clone)]
pub struct HostDirs {
    pub root: PathBuf,
    pub agents: PathBuf,
    pub data: PathBuf,
    pub policy: PathBuf,
    /// A compiled-code cache shared between hosts, or `None` for `<data>/compiled`.
    pub cache: Option<PathBuf>,
}

impl HostDirs {
    /// Creates `<parent>/<name>/{agents,data}` and the policy file, and puts `agents`
    /// (`(file name, component bytes)`) into the agents folder.
    pub fn create(parent: &Path, name: &str, policy: &str, agents: &[(String, Vec<u8>)]) -> Self {
        let root = parent.join(name);
        let dirs = Self {
            agents: root.join("agents"),
            data: root.join("data"),
            policy: root.join("policy.toml"),
            cache: None,
            root,
        };
        std::fs::create_dir_all(&dirs.agents).expect("create the agents folder");
        std::fs::create_dir_all(&dirs.data).expect("create the data folder");
        std::fs::write(&dirs.policy, policy).expect("write the policy");
        for (file, bytes) in agents {
            std::fs::write(dirs.agents.join(file), bytes).expect("copy an agent");
        }
        dirs
    }

    pub fn with_cache(mut self, cache: &Path) -> Self {
        self.cache = Some(cache.to_path_buf());
        self
    }
}

/// A running `corral serve`.
#[derive(Debug)]
pub struct Corral {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// When the process was spawned.
    pub spawned: Instant,
    /// From spawn to the `corral listening on` line.
    pub listening_after: Duration,
    /// The SW4RM gRPC listener, when the policy turns it on (`server.grpc_listen`).
    pub grpc: Option<SocketAddr>,
    log: PathBuf,
}

impl Corral {
    /// Spawns `bin serve` on the folders and waits for its listening line.
    pub fn start(bin: &Path, dirs: &HostDirs) -> Self {
        let log = dirs.root.join(format!("host-{}.log", unique()));
        let log_file = std::fs::File::create(&log).expect("create the host log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--agents")
            .arg(&dirs.agents)
            .arg("--data")
            .arg(&dirs.data)
            .arg("--policy")
            .arg(&dirs.policy)
            // The defaults of a deployment, whatever the shell running the bench has set.
            .env_remove("RUST_LOG")
            .env_remove("CORRAL_CACHE")
            .env_remove("CORRAL_LISTEN")
            .env_remove("CORRAL_AGENTS")
            .env_remove("CORRAL_DATA")
            .env_remove("CORRAL_POLICY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if let Some(cache) = &dirs.cache {
            // The variable rather than `--cache`: an older binary under test just ignores it.
            cmd.env("CORRAL_CACHE", cache);
        }
        let spawned = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining stdout after the line, so the pipe never fills.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("corral gRPC listening on ") {
                    let _ = tx.send((format!("grpc {}", addr.trim()), Instant::now()));
                }
                if let Some(url) = line.strip_prefix("corral listening on http://") {
                    let _ = tx.send((url.trim().to_string(), Instant::now()));
                }
            }
        });
        let mut host = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            spawned,
            listening_after: Duration::ZERO,
            grpc: None,
            log,
        };
        // The gRPC line (if any) comes first.
        let mut first = rx.recv_timeout(START_TIMEOUT);
        if let Ok((line, _)) = &first
            && let Some(grpc) = line.strip_prefix("grpc ")
        {
            host.grpc = grpc.parse().ok();
            first = rx.recv_timeout(START_TIMEOUT);
        }
        match first {
            Ok((addr, at)) => {
                host.addr = addr.parse().unwrap_or_else(|e| panic!("listening address '{addr}': {e}"));
                host.listening_after = at - spawned;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = host.child.as_mut().and_then(|c| c.wait().ok());
                panic!("corral exited before listening ({status:?}); its log:\n{}", host.log_tail())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "corral did not print its listening line within {START_TIMEOUT:?}; its log:\n{}",
                host.log_tail()
            ),
        }
        host
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Resident set size, in bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    /// Resident bytes by kind of mapping, from `/proc/PID/smaps`: reservations of 1 GiB or more
    /// (the pooling allocator's memory, table and stack pools), other anonymous memory (the
    /// allocator's heap, thread stacks), and file-backed mappings (code, SQLite, and the memfd
    /// images wasm memories are copy-on-write mapped from: the same physical pages counted once
    /// per slot). Plus the private total, which counts every physical page once.
    pub fn rss_breakdown(&self) -> [(&'static str, u64); 4] {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).unwrap_or_default();
        let (mut pools, mut anon, mut files, mut private) = (0, 0, 0, 0);
        let mut current: Option<(u64, bool)> = None;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or_default();
            if let Some((start, end)) = first.split_once('-')
                && let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                let path = fields.nth(4);
                current = Some((end - start, path.is_some_and(|p| p.starts_with('/'))));
            } else if first == "Private_Clean:" || first == "Private_Dirty:" {
                private += fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            } else if first == "Rss:" {
                let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match current {
                    Some((size, _)) if size >= 1 << 30 => pools += kb * 1024,
                    Some((_, true)) => files += kb * 1024,
                    _ => anon += kb * 1024,
                }
            }
        }
        [
            ("RSS in wasm pools (memories, tables, fiber stacks)", pools),
            ("RSS in heap and thread stacks", anon),
            ("RSS in file mappings (code, SQLite, shared memory images)", files),
            ("private (not shared with any other mapping; what the instances really cost)", private),
        ]
    }

    /// SIGTERM, then waits for the exit; returns how long that took.
    pub fn stop(mut self) -> Duration {
        let Some(mut child) = self.child.take() else { return Duration::ZERO };
        let asked = Instant::now();
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        if !sent.is_ok_and(|s| s.success()) {
            eprintln!("  warning: kill -TERM {} failed; killing it", child.id());
            let _ = child.kill();
        }
        let status = child.wait().expect("wait for corral");
        if !status.success() {
            eprintln!("  warning: corral exited with {status}; its log:\n{}", self.log_tail());
        }
        asked.elapsed()
    }

    /// The end of the host's log (stderr).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path` → `(status, JSON body or Null)`.
    pub fn get_json(&self, load: &Load, path: &str) -> (u16, Value) {
        let (status, body) = load.call(&Request::get(self.addr, path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `GET /healthz` until it answers 200 (bounded).
    pub fn wait_healthy(&self, load: &Load) {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = load.call(&Request::get(self.addr, "/healthz")) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "/healthz never answered 200:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many of the agent's jobs have `status` (follows every page).
    pub fn count_jobs(&self, load: &Load, agent: &str, status: &str) -> usize {
        let mut count = 0;
        let mut cursor = String::new();
        loop {
            let path = format!("/v1/jobs?status={status}&agent={agent}&limit=1000&cursor={cursor}");
            let (code, page) = self.get_json(load, &path);
            assert_eq!(code, 200, "GET {path}: {page}");
            count += page["jobs"].as_array().map_or(0, Vec::len);
            match page["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = next.to_string(),
                _ => return count,
            }
        }
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A number unique within this process, for file names.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
