//! The load generator: HTTP/1.1 over loopback with hyper's client connection API, one
//! keep-alive connection (TCP_NODELAY) per task, each issuing requests back to back.
//!
//! It runs on its own 2-worker tokio runtime, so it never shares threads with the server
//! under test (the baseline server has its own runtime; corral is another process). A
//! response counts as a success only with an expected status and, when asked, an expected
//! substring in its body; anything else is an error, counted and sampled to stderr. Latency
//! is recorded per successful measured request in an HDR histogram (nanoseconds).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// No single request may take longer than this; past it, it is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many error responses are kept (and printed) per run.
const ERROR_SAMPLES: usize = 5;

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub struct Request {
    pub addr: SocketAddr,
    pub method: Method,
    /// Path and query, e.g. `/v1/jobs?wait=30000`.
    pub path: String,
    /// Sent as `application/json` when not empty.
    pub body: Bytes,
    /// Sent as `Authorization: Bearer …` when set.
    pub bearer: Option<String>,
}

impl Request {
    pub fn post(addr: SocketAddr, path: &str, body: &str) -> Self {
        Self { addr, method: Method::POST, path: path.to_string(), body: Bytes::from(body.to_string()), bearer: None }
    }

    /// The same request with a bearer token.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}"));
        self
    }

    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Self { addr, method: Method::GET, path: path.to_string(), body: Bytes::new(), bearer: None }
    }
}

/// What a successful response looks like.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub status: &'static [u16],
    /// A substring the body must contain.
    pub contains: Option<&'static str>,
}

impl Expect {
    fn accepts(&self, status: u16, body: &[u8]) -> bool {
        self.status.contains(&status)
            && self.contains.is_none_or(|needle| body.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// Requests completing during `measure` (after `warmup`) are counted.
    Timed { warmup: Duration, measure: Duration },
    /// `warmup` requests not counted, then `measured` requests counted, spread over the connections.
    Counted { warmup: u64, measured: u64 },
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Successful measured requests.
    pub ok: u64,
    /// Failed requests, warm-up included (any failure means the figure is suspect).
    pub errors: u64,
    /// The measured span.
    pub elapsed: Duration,
    /// Latency of the successful measured requests, in nanoseconds.
    pub latency: Histogram<u64>,
    /// The first few errors, as text.
    pub error_samples: Vec<String>,
}

impl Outcome {
    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.ok as f64 / secs } else { f64::NAN }
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() { f64::NAN } else { self.latency.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ok in {:.2} s = {:.0}/s, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} errors",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.per_sec(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.latency.max() as f64 / 1000.0,
            self.errors
        )
    }
}

/// The generator and its runtime.
#[derive(Debug)]
pub struct Load {
    rt: tokio::runtime::Runtime,
}

impl Load {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loadgen")
            .enable_all()
            .build()
            .expect("load generator runtime");
        Self { rt }
    }

    /// Runs `future` on the generator's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Drives `request` over `connections` connections according to `plan`.
    pub fn run(&self, request: &Request, expect: Expect, connections: usize, plan: Plan) -> Outcome {
        let shared = Arc::new(Shared {
            request: request.clone(),
            expect,
            plan,
            next_ticket: AtomicU64::new(0),
            started: Instant::now(),
            measure_start: OnceLock::new(),
            errors: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        });
        let (latency, ok) = self.rt.block_on(async {
            let workers: Vec<_> = (0..connections.max(1)).map(|_| tokio::spawn(worker(Arc::clone(&shared)))).collect();
            let mut latency = new_histogram();
            let mut ok = 0;
            for w in workers {
                let (h, n) = w.await.expect("load worker panicked");
                latency.add(&h).expect("histograms of the same bounds add");
                ok += n;
            }
            (latency, ok)
        });
        let elapsed = match plan {
            Plan::Timed { measure, .. } => measure,
            Plan::Counted { .. } => shared.measure_start.get().map(Instant::elapsed).unwrap_or_default(),
        };
        let errors = shared.errors.load(Ordering::Relaxed);
        let error_samples = shared.samples.lock().map(|s| s.clone()).unwrap_or_default();
        Outcome { ok, errors, elapsed, latency, error_samples }
    }

    /// One request on a fresh connection: `(status, body)`.
    pub fn call(&self, request: &Request) -> Result<(u16, Bytes), String> {
        self.rt.block_on(async {
            let mut conn = Conn::new(request.addr);
            conn.send(request).await
        })
    }
}

struct Shared {
    request: Request,
    expect: Expect,
    plan: Plan,
    next_ticket: AtomicU64,
    started: Instant,
    measure_start: OnceLock<Instant>,
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.samples.lock()
            && samples.len() < ERROR_SAMPLES
        {
            eprintln!("  load error ({} {}): {what}", self.request.method, self.request.path);
            samples.push(what);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// One connection's loop. Returns its latency histogram and its count of measured successes.
async fn worker(shared: Arc<Shared>) -> (Histogram<u64>, u64) {
    let mut latency = new_histogram();
    let mut ok = 0u64;
    let mut conn = Conn::new(shared.request.addr);
    let (timed_start, timed_end) = match shared.plan {
        Plan::Timed { warmup, measure } => (shared.started + warmup, shared.started + warmup + measure),
        Plan::Counted { .. } => (shared.started, shared.started),
    };
    loop {
        let counted_ticket = match shared.plan {
            Plan::Timed { .. } => {
                if Instant::now() >= timed_end {
                    break;
                }
                None
            }
            Plan::Counted { warmup, measured } => {
                let ticket = shared.next_ticket.fetch_add(1, Ordering::Relaxed);
                if ticket >= warmup + measured {
                    break;
                }
                if ticket == warmup {
                    let _ = shared.measure_start.set(Instant::now());
                }
                Some(ticket >= warmup)
            }
        };
        let sent = Instant::now();
        let result = conn.send(&shared.request).await;
        let done = Instant::now();
        let counted = counted_ticket.unwrap_or(done >= timed_start && done < timed_end);
        match result {
            Ok((status, body)) if shared.expect.accepts(status, &body) => {
                if counted {
                    latency.saturating_record(u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX));
                    ok += 1;
                }
            }
            Ok((status, body)) => {
                let shown: String = String::from_utf8_lossy(&body).chars().take(600).collect();
                shared.error(format!("HTTP {status}: {shown}"));
            }
            Err(e) => {
                shared.error(e);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latency, ok)
}

/// A keep-alive HTTP/1.1 client connection that reconnects when the server closed it.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, host: addr.to_string(), sender: None }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let stream =
                TcpStream::connect(self.addr).await.map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.addr))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_string())
    }

    /// Sends one request and reads the whole response: `(status, body)`. On a transport
    /// error the connection is dropped and the next call reconnects.
    pub async fn send(&mut self, request: &Request) -> Result<(u16, Bytes), String> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(request))
            .await
            .unwrap_or_else(|_| Err(format!("no response within {} s", REQUEST_TIMEOUT.as_secs())));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn send_inner(&mut self, request: &Request) -> Result<(u16, Bytes), String> {
        let host = self.host.clone();
        let sender = self.connect().await?;
        sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
        let mut builder = hyper::Request::builder().method(request.method.clone()).uri(&request.path);
        builder = builder.header(header::HOST, host);
        if let Some(bearer) = &request.bearer {
            builder = builder.header(header::AUTHORIZATION, bearer);
        }
        if !request.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder.body(Full::new(request.body.clone())).map_err(|e| format!("bad request: {e}"))?;
        let response = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        Ok((status, body))
    }
}
