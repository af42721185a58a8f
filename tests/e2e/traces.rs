//! Traces: a request's `traceparent` carried into its job, its host calls and its children,
//! exported over OTLP to a collector the test runs.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

use crate::harness::{Host, eventually};

/// An OTLP/gRPC trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_collector() -> (Collector, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    let incoming = futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    (collector, format!("http://{addr}"))
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

/// Runs `orchestrator` with one `echo` child, sending `traceparent`; returns the finished job.
async fn orchestrate_one_echo(host: &Host, traceparent: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/jobs?wait=30000", host.url))
        .header("traceparent", traceparent)
        .json(&json!({"agent": "orchestrator", "input": {"tasks": [{"agent": "echo", "input": 1}]}}))
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_request_its_job_host_calls_and_child_job_are_exported_as_one_trace() {
    let (collector, endpoint) = start_collector().await;
    let policy = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 100\n");
    let host = Host::start_with_policy(&["orchestrator", "echo"], Some(&policy));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let job = orchestrate_one_echo(&host, &format!("00-{trace_id}-{caller_span}-01")).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["trace_id"], trace_id, "the job's record names its trace: {job}");
    let job_id = job["id"].as_str().unwrap().to_owned();

    let spans = eventually("request, job, delegation and child spans exported", || async {
        let spans = collector.spans.lock().unwrap().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let complete =
            ["POST /v1/jobs", "job orchestrator", "agent.delegate", "job echo"].iter().all(|n| names.contains(n));
        complete.then_some(spans)
    })
    .await;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
    let named =
        |name: &str| *ours.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name} in the trace"));
    let request = named("POST /v1/jobs");
    let parent_job = named("job orchestrator");
    let delegate = named("agent.delegate");
    let child_job = named("job echo");
    assert_eq!(hex(&request.parent_span_id), caller_span, "the request continues the caller's span");
    assert_eq!(parent_job.parent_span_id, request.span_id, "request → job");
    assert_eq!(delegate.parent_span_id, parent_job.span_id, "job → host call");
    assert_eq!(child_job.parent_span_id, delegate.span_id, "host call → child job");
    assert_eq!(attribute(parent_job, "corral.job_id").as_deref(), Some(job_id.as_str()));
    let host_calls: Vec<_> = ours.iter().filter(|s| s.parent_span_id == parent_job.span_id).collect();
    assert!(host_calls.iter().any(|s| s.name == "events"), "the job's other host calls are spans too: {host_calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_traceparent_still_reaches_the_job_and_its_children() {
    let host = Host::start(&["orchestrator", "echo"]);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let job = orchestrate_one_echo(&host, &format!("00-{trace_id}-b7ad6b7169203331-01")).await;
    assert_eq!(job["trace_id"], trace_id, "{job}");
    let traced: i64 = host
        .db()
        .query_row("SELECT COUNT(*) FROM jobs WHERE trace_parent LIKE ?1", [format!("00-{trace_id}-%")], |r| r.get(0))
        .unwrap();
    assert_eq!(traced, 2, "the parent and its child both carry the trace");
    let events = host.events(job["id"].as_str().unwrap()).await;
    assert_eq!(events[0]["data"]["trace_id"], trace_id, "the first event names the trace: {:?}", events[0]);
    let untraced = host.run("echo", json!("plain"), None).await;
    assert!(untraced.get("trace_id").is_none(), "{untraced}");
}
