//! The client half of the `corral` command line: `invoke`, `agents`, `jobs`, `job`, `events`,
//! `cancel`, and for messages `send`, `message`, `messages`, `inbox`. Each talks to a running `corral serve` over its HTTP API; none of them touches the
//! engine, the store or the filesystem of the server, so they work the same against a remote host.
//!
//! - `client` — a typed HTTP client for `/v1` (jobs, events with resume, agents, error envelope);
//! - `commands` — one function per subcommand: arguments in, exit status out;
//! - `render` — tables, event lines, the progress bar; plain when stdout is not a terminal.
//!
//! Exit codes are part of the interface, for scripts:
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success (for `invoke` without `--follow`: also "still running when `--wait` ran out") |
//! | 1 | the job failed, was cancelled or timed out (`invoke`, and `events` when it followed to the end) |
//! | 2 | bad arguments, a 4xx/5xx answer, or no server at `--server` |
//!
//! Wiring it into `main.rs` (the flags are `global`, so they may also follow the subcommand):
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     client: corral::cli::ClientArgs,
//!     #[command(subcommand)]
//!     command: Command,
//! }
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     Serve(ServeArgs),
//!     #[command(flatten)]
//!     Client(corral::cli::ClientCommand),
//! }
//! // in an async main: Command::Client(cmd) => corral::cli::run(cli.client, cmd).await,
//! ```

mod arcp;
pub mod client;
mod commands;
mod messages;
mod render;
mod secrets;
mod swarm;

use std::process::ExitCode;

pub use client::{Client, ClientError};

/// Where and how to reach the server; shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the corral server.
    #[arg(long, global = true, env = "CORRAL_SERVER", default_value = "http://127.0.0.1:7070", value_name = "URL")]
    pub server: String,

    /// Bearer token, when the server is configured with tokens.
    #[arg(long, global = true, env = "CORRAL_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Print raw JSON instead of tables and text (one event per line when following).
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands that talk to a running server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Run an agent and print its output.
    ///
    /// Without --follow, waits up to --wait milliseconds for the result; a job still running
    /// then is left to run, and its id is printed. With --follow, prints its logs, progress and
    /// capability decisions as they happen, then the output.
    Invoke {
        /// The agent to run, optionally pinned to a version: `echo` or `echo@0.1.0`.
        #[arg(value_name = "AGENT[@VERSION]")]
        agent: String,

        /// The job's input: JSON text, `@FILE` to read it from a file, or `@-` for stdin.
        #[arg(long, short, value_name = "JSON|@FILE")]
        input: Option<String>,

        /// A lease narrowing what the job may do: JSON text or `@FILE`.
        #[arg(long, value_name = "JSON|@FILE")]
        lease: Option<String>,

        /// Makes retrying safe: a second submit with the same key returns the first job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,

        /// Stream the job's events until it ends.
        #[arg(long, short)]
        follow: bool,

        /// How long to wait for the result before printing the job id instead.
        #[arg(long, value_name = "MS", default_value_t = 30_000, conflicts_with = "follow")]
        wait: u64,
    },

    /// List registered agents, their versions and the scopes they ask for.
    Agents,

    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this state.
        #[arg(long, value_name = "STATUS", value_parser = ["queued", "running", "completed", "failed", "cancelled", "timed_out"])]
        status: Option<String>,

        /// Only jobs of this agent.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,

        /// At most this many jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,

        /// Continue from the `next_cursor` of an earlier page.
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },

    /// Show one job as JSON.
    Job {
        /// The job id.
        id: String,
    },

    /// Print a job's events; follows until the job ends unless --no-follow.
    Events {
        /// The job id.
        job: String,

        /// Start after this sequence number (events 1..=SEQ are skipped).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,

        /// Print the events recorded so far and exit, instead of waiting for the job to end.
        #[arg(long)]
        no_follow: bool,
    },

    /// Ask the server to cancel a job.
    Cancel {
        /// The job id.
        job: String,
    },

    /// Send a message (as an external producer); prints its id once it is RECEIVED.
    Send {
        /// The recipient: an agent (`greeter`, `greeter@0.1.0`), an external agent id, or with
        /// --topic a topic.
        recipient: String,

        /// Publish to the topic RECIPIENT instead (one copy per subscriber).
        #[arg(long)]
        topic: bool,

        /// The payload: JSON text, `@FILE` or `@-` for stdin (sent as application/json).
        #[arg(long, short, value_name = "JSON|@FILE")]
        payload: Option<String>,

        /// SW4RM message type (default DATA).
        #[arg(long = "type", value_name = "TYPE")]
        message_type: Option<String>,

        /// Names the logical message: a resend with the same token is deduplicated.
        #[arg(long, value_name = "TOKEN")]
        idempotency_token: Option<String>,

        /// How long one delivery attempt may take, in ms.
        #[arg(long, value_name = "MS")]
        ack_timeout_ms: Option<u64>,

        /// Fail the message with TTL_EXPIRED if it has no outcome after this long, in ms.
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
    },

    /// Show one message with its stage history.
    Message {
        /// The message id.
        id: String,
    },

    /// List messages, newest first.
    Messages {
        #[arg(long, value_name = "PRODUCER")]
        producer: Option<String>,
        #[arg(long, value_name = "RECIPIENT")]
        recipient: Option<String>,
        /// RECEIVED, READ, FULFILLED, REJECTED, FAILED or TIMED_OUT.
        #[arg(long, value_name = "STAGE")]
        stage: Option<String>,
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },

    /// The messages routed to an agent; with --follow, keep printing new ones and stage changes.
    Inbox {
        /// An agent name or external agent id.
        agent: String,
        #[arg(long, short)]
        follow: bool,
    },

    /// Act as an ARCP v1.1 client (over WebSocket), against corral or any other ARCP runtime.
    Arcp {
        #[command(subcommand)]
        action: ArcpCommand,
    },

    /// Manage secrets agents can have injected into requests (operators only).
    Secret {
        #[command(subcommand)]
        action: SecretCommand,
    },

    /// Federation over Agent Swarm Protocol: swarms, members, messages (operators only).
    Swarm {
        #[command(subcommand)]
        action: SwarmCommand,
    },
}

/// `corral swarm ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SwarmCommand {
    /// Create a swarm with this host as its master.
    Create { name: String },
    /// List the swarms this host is in.
    List,
    /// Issue an invite to a swarm this host is master of; prints the `swarm://` URL.
    Invite {
        swarm: String,
        /// Lifetime in ms (default: the policy's `swarm.invite_ttl_ms`, 24 h).
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
        /// Joins it admits at most.
        #[arg(long, value_name = "N")]
        max_uses: Option<u64>,
    },
    /// Join a swarm by invite (token or `swarm://` URL); the invite is verified against its
    /// master's key first.
    Join { invite: String },
    /// Leave a swarm (a master hands its role over first).
    Leave { swarm: String },
    /// Remove a member (master only).
    Kick { swarm: String, agent_id: String },
    /// Hand the master role to a member (master only).
    Transfer { swarm: String, agent_id: String },
    /// Mute a swarm, or one member with --agent, on this host; --off unmutes.
    Mute {
        swarm: String,
        #[arg(long, value_name = "AGENT_ID")]
        agent: Option<String>,
        #[arg(long)]
        off: bool,
    },
    /// List a swarm's members with their keys and signature schemes.
    Members { swarm: String },
    /// Send a message to a member (its agent id) or to `broadcast`.
    Send {
        swarm: String,
        recipient: String,
        content: String,
        /// `message` or `notification`.
        #[arg(long = "type", value_name = "TYPE", default_value = "message")]
        kind: String,
    },
    /// Messages received from swarms, oldest first.
    Inbox {
        #[arg(long, value_name = "SWARM")]
        swarm: Option<String>,
        /// Only after this seq.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: i64,
        /// Include muted swarms and members.
        #[arg(long)]
        muted: bool,
    },
    /// Messages waiting for delivery (and dead ones, with their last error).
    Outbox,
    /// The stages a message sent to an agent on another host went through, as reported back.
    Message { id: String },
}

/// `corral arcp ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ArcpCommand {
    /// Open a session, run one tool (agent) and print its result; logs and progress go to
    /// stderr. Ctrl-C cancels the job. Exit 0 if it completed, 1 if it failed or was cancelled.
    Invoke {
        /// The tool to run: `echo` or `echo@0.1.0`.
        #[arg(value_name = "TOOL[@VERSION]")]
        agent: String,

        /// The runtime's WebSocket URL (default: the --server's `/arcp`).
        #[arg(long, value_name = "WS_URL")]
        url: Option<String>,

        /// The arguments: JSON text, `@FILE` or `@-` for stdin.
        #[arg(long, short, value_name = "JSON|@FILE")]
        input: Option<String>,

        /// An ARCP `lease_request` (with corral: `grants`, `limits`, `expires_at`): JSON or `@FILE`.
        #[arg(long, value_name = "JSON|@FILE")]
        lease: Option<String>,

        /// A cost budget amount, `CURRENCY:AMOUNT` (corral meters `fuel`, `host_calls`,
        /// `net_bytes`); repeat for more.
        #[arg(long, value_name = "CURRENCY:AMOUNT")]
        cost_budget: Vec<String>,

        /// The envelope's `idempotency_key`: resending returns the same job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
}

/// `corral secret ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretCommand {
    /// Set or rotate a secret. The value is read from stdin (or --value-file), never taken as
    /// an argument, so it stays out of shell history and process listings.
    Set {
        /// The secret's name, as agents name it (`[A-Za-z0-9._-]`, at most 64).
        name: String,

        /// A destination it may be sent to (a `net.fetch` URL pattern); repeat for more.
        #[arg(long, required = true, value_name = "URL_PATTERN")]
        allow: Vec<String>,

        /// Inject as `Authorization: Bearer <value>` (the default).
        #[arg(long, conflicts_with_all = ["basic", "header"])]
        bearer: bool,

        /// Inject as `Authorization: Basic base64(<value>)`; the value is `user:password`.
        #[arg(long, conflicts_with = "header")]
        basic: bool,

        /// Inject as this header, e.g. `X-Api-Key`.
        #[arg(long, value_name = "HEADER")]
        header: Option<String>,

        /// Only this agent may use it; repeat for more (default: any agent granted `secret.use`).
        #[arg(long = "agent", value_name = "AGENT")]
        agents: Vec<String>,

        /// Only jobs of this principal may use it; repeat for more.
        #[arg(long = "principal", value_name = "PRINCIPAL")]
        principals: Vec<String>,

        /// Read the value from this file instead of stdin (one trailing newline is dropped).
        #[arg(long, value_name = "FILE")]
        value_file: Option<std::path::PathBuf>,
    },

    /// List secrets: names, destinations, injection, who may use them, when last set. No values.
    List,

    /// Remove a secret.
    Rm { name: String },
}

/// Runs one client subcommand against the server in `args`, printing to stdout and stderr.
pub async fn run(args: ClientArgs, cmd: ClientCommand) -> ExitCode {
    commands::run(args, cmd).await
}
