//! One function per client subcommand: read the arguments, make the requests, print, and say
//! how it went. The exit code is decided in one place, [`run`], from [`Done`] or [`Failure`].
//!
//! Output goes through `writeln!` on locked handles rather than `println!`, so a closed pipe
//! (`corral events JOB | head`) ends the command quietly instead of panicking.

use std::io::{self, Read as _, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::client::{Client, ClientError, ErrorInfo, EventBody, Job, JobQuery, JobStatus, SubmitJob};
use super::render::{self, EventPrinter, Style};
use super::{ArcpCommand, ClientArgs, ClientCommand};

/// With `events --no-follow`: once the backlog has been sent, the server just keeps the stream
/// open; this much silence means we have everything recorded so far.
const NO_FOLLOW_IDLE: Duration = Duration::from_millis(750);

/// How a command that reached the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    Success,
    /// The job failed, was cancelled or timed out.
    JobUnsuccessful,
}

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// A remote runtime refused, misbehaved or went away (the ARCP client).
    #[error("{0}")]
    Remote(String),
}

pub(super) async fn run(args: ClientArgs, cmd: ClientCommand) -> ExitCode {
    let result = match Client::new(&args.server, args.token.clone()) {
        Ok(client) => execute(&client, cmd, args.json).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(Done::Success) => ExitCode::SUCCESS,
        Ok(Done::JobUnsuccessful) => ExitCode::from(1),
        // The reader went away (`| head`): nothing left to tell anyone.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(failure) => {
            let mut err = io::stderr().lock();
            let _ = writeln!(err, "error: {failure}");
            if let Failure::Client(ClientError::Api { status: 401 | 403, .. }) = failure {
                let _ = writeln!(err, "hint: pass --token or set CORRAL_TOKEN to a token the server accepts");
            }
            ExitCode::from(2)
        }
    }
}

async fn execute(client: &Client, cmd: ClientCommand, json: bool) -> Result<Done, Failure> {
    match cmd {
        ClientCommand::Invoke { agent, input, lease, idempotency_key, follow, wait } => {
            let agent = agent.trim().to_owned();
            if agent.is_empty() || agent.starts_with('@') {
                return Err(Failure::Usage("name the agent to run, e.g. `corral invoke echo`".to_owned()));
            }
            let submit = SubmitJob {
                agent,
                input: json_arg("--input", input)?.unwrap_or(Value::Null),
                lease: json_arg("--lease", lease)?,
                idempotency_key,
            };
            if follow {
                let job = client.submit(&submit, None).await?;
                if !json {
                    stdout_line(&format!("[job] {} {}", job.id, job.agent_ref()))?;
                }
                follow_events(client, &job.id, None, json, FollowMode::Invoke).await
            } else {
                let job = client.submit(&submit, Some(wait)).await?;
                report_submitted(&job, wait, json)
            }
        }
        ClientCommand::Agents => {
            let (agents, raw) = client.agents().await?;
            if json {
                stdout_line(&render::pretty(&raw))?;
            } else if agents.is_empty() {
                stderr_line("no agents registered");
            } else {
                stdout_text(&render::agents_table(&agents))?;
            }
            Ok(Done::Success)
        }
        ClientCommand::Jobs { status, agent, limit, cursor } => {
            let page = client.jobs(&JobQuery { status, agent, limit, cursor }).await?;
            if json {
                stdout_line(&render::pretty(&page.raw))?;
                return Ok(Done::Success);
            }
            if page.jobs.is_empty() {
                stderr_line("no jobs found");
            } else {
                stdout_text(&render::jobs_table(&page.jobs))?;
            }
            if let Some(cursor) = &page.next_cursor {
                stderr_line(&format!("more: corral jobs --cursor {cursor}"));
            }
            Ok(Done::Success)
        }
        ClientCommand::Job { id } => {
            let job = client.job(&id).await?;
            stdout_line(&render::pretty(&job.raw))?;
            Ok(Done::Success)
        }
        ClientCommand::Events { job, after, no_follow } => {
            if no_follow {
                let current = client.job(&job).await?;
                if !current.status.is_terminal() {
                    return follow_events(client, &job, after, json, FollowMode::Backlog).await;
                }
            }
            let done = follow_events(client, &job, after, json, FollowMode::Events).await?;
            Ok(if no_follow { Done::Success } else { done })
        }
        ClientCommand::Send { recipient, topic, payload, message_type, idempotency_token, ack_timeout_ms, ttl_ms } => {
            let payload = json_arg("--payload", payload)?;
            let send = super::messages::Send {
                recipient,
                topic,
                payload,
                message_type,
                idempotency_token,
                ack_timeout_ms,
                ttl_ms,
            };
            super::messages::send(client, send, json).await
        }
        ClientCommand::Message { id } => super::messages::show(client, &id).await,
        ClientCommand::Messages { producer, recipient, stage, limit, cursor } => {
            let query = super::messages::Query { producer, recipient, stage, limit, cursor };
            super::messages::list(client, &query, json).await
        }
        ClientCommand::Secret { action } => super::secrets::run(client, action, json).await,
        ClientCommand::Swarm { action } => super::swarm::run(client, action, json).await,
        ClientCommand::Arcp {
            action: ArcpCommand::Invoke { agent, url, input, lease, cost_budget, idempotency_key },
        } => {
            let invoke = super::arcp::Invoke {
                url: url.unwrap_or_else(|| arcp_url(client.server())),
                token: client.token().map(str::to_owned),
                agent,
                input: json_arg("--input", input)?.unwrap_or(Value::Null),
                lease: json_arg("--lease", lease)?,
                cost_budget,
                idempotency_key,
                json,
            };
            super::arcp::invoke(invoke).await
        }
        ClientCommand::Inbox { agent, follow } => super::messages::inbox(client, &agent, follow, json).await,
        ClientCommand::Cancel { job } => {
            let job = client.cancel(&job).await?;
            if json {
                stdout_line(&render::pretty(&job.raw))?;
            } else if job.status == JobStatus::Cancelled {
                stdout_line(&format!("job {} cancelled", job.id))?;
            } else {
                stdout_line(&format!("cancel requested for job {} (now {})", job.id, job.status))?;
            }
            Ok(Done::Success)
        }
    }
}

/// `invoke` without `--follow`: the job as it stood when `wait` ran out or it finished.
fn report_submitted(job: &Job, wait_ms: u64, json: bool) -> Result<Done, Failure> {
    if json {
        stdout_line(&render::pretty(&job.raw))?;
    }
    match job.status {
        JobStatus::Completed => {
            if !json {
                stdout_line(&render::pretty(job.output.as_ref().unwrap_or(&Value::Null)))?;
            }
            Ok(Done::Success)
        }
        status if status.is_terminal() => {
            stderr_line(&render::job_failure_line(&job.id, status, job.error.as_ref()));
            Ok(Done::JobUnsuccessful)
        }
        status => {
            if !json {
                stdout_line(&format!("job {} is {status}", job.id))?;
            }
            stderr_line(&format!(
                "hint: not finished after {wait_ms} ms; it keeps running — watch it with `corral events {id}` \
                 or fetch the result later with `corral job {id}`",
                id = job.id
            ));
            Ok(Done::Success)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowMode {
    /// `invoke --follow`: events until the end, then the output.
    Invoke,
    /// `events`: events until the end.
    Events,
    /// `events --no-follow` on a running job: what is recorded so far.
    Backlog,
}

/// Prints a job's events as they arrive; returns how the job ended.
async fn follow_events(
    client: &Client,
    job_id: &str,
    after: Option<u64>,
    json: bool,
    mode: FollowMode,
) -> Result<Done, Failure> {
    let mut follower = client.events(job_id, after);
    let style = if json { Style::PLAIN } else { Style::detect() };
    let mut printer = EventPrinter::new(io::stdout(), style);
    let mut ending: Option<(JobStatus, Option<Value>, Option<ErrorInfo>)> = None;

    loop {
        let item = if mode == FollowMode::Backlog {
            match tokio::time::timeout(NO_FOLLOW_IDLE, follower.next()).await {
                Ok(item) => item,
                Err(_idle) => break,
            }
        } else {
            follower.next().await
        };
        let Some(item) = item else { break };
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                printer.finish()?;
                return Err(e.into());
            }
        };
        if json {
            let line = serde_json::to_string(&event).map_err(|e| Failure::Output(e.into()))?;
            stdout_line(&line)?;
        } else {
            printer.event(&event)?;
        }
        if let EventBody::State { status, output, error } = event.body()
            && status.is_terminal()
        {
            ending = Some((status, output, error));
        }
    }
    printer.finish()?;

    if mode == FollowMode::Backlog {
        return Ok(Done::Success);
    }
    // The stream can end without a terminal event we saw: we resumed after it, or the job had
    // already finished. The job record has the answer.
    let (status, output, error) = match ending {
        Some((status, output, error))
            if status != JobStatus::Completed || output.is_some() || mode != FollowMode::Invoke =>
        {
            (status, output, error)
        }
        _ => {
            let job = client.job(job_id).await?;
            (job.status, job.output, job.error)
        }
    };
    match status {
        JobStatus::Completed => {
            if mode == FollowMode::Invoke && !json {
                stdout_line(&render::pretty(output.as_ref().unwrap_or(&Value::Null)))?;
            }
            Ok(Done::Success)
        }
        status if status.is_terminal() => {
            if !json {
                stderr_line(&render::job_failure_line(job_id, status, error.as_ref()));
            }
            Ok(Done::JobUnsuccessful)
        }
        // The follower only stops early on an error, which returned above.
        _ => Ok(Done::Success),
    }
}

/// The ARCP endpoint of an HTTP server URL: `http://h:p` → `ws://h:p/arcp`.
fn arcp_url(server: &str) -> String {
    let server = server.trim_end_matches('/');
    let ws = match server.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("ws://{server}"),
    };
    format!("{ws}/arcp")
}

/// Reads a JSON argument given inline, as `@FILE`, or as `@-` (stdin).
fn json_arg(flag: &str, value: Option<String>) -> Result<Option<Value>, Failure> {
    let Some(value) = value else { return Ok(None) };
    let (text, from) = match value.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::Usage(format!("cannot read {flag} from stdin: {e}")))?;
            (text, " on stdin".to_owned())
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read {flag} file '{path}': {e}")))?;
            (text, format!(" in '{path}'"))
        }
        None => (value, String::new()),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Failure::Usage(format!(
            "{flag}{from} is not valid JSON ({e}); to send plain text, quote it as a JSON string: {flag} '\"hello\"'"
        ))
    })
}

pub(super) fn stdout_line(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

pub(super) fn stdout_text(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Messages for the person, not the pipe; a failure to write them is not worth failing over.
pub(super) fn stderr_line(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}
