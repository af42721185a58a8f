//! The `corral` command: `serve` runs the host, `build` turns agent crates into
//! components, and the rest are clients of a running host's HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: a job allocates and frees many small objects across
/// threads (request, lease, JSON, store ops); glibc's arenas spent ~15% of the host's CPU in
/// malloc/free under load (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corral — run sandboxed WebAssembly agents under leases.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about)]
struct Cli {
    #[command(flatten)]
    client: corral::cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host: load agents from a folder, serve the HTTP API.
    Serve(ServeArgs),
    /// Build agent crates (a crate or a workspace) into components in an agents folder.
    Build(BuildArgs),
    /// This host's Agent Swarm Protocol identity: agent id and public key (never the private
    /// key). Made in the data folder on first use, as `serve` does.
    Identity(IdentityArgs),
    #[command(flatten)]
    Client(corral::cli::ClientCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (default from the policy, else 127.0.0.1:7070).
    #[arg(long, env = "CORRAL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Also serve SW4RM over gRPC (router, registry, health) on this address; without a value,
    /// 127.0.0.1:50051. Off unless given here or as `server.grpc_listen` in the policy.
    #[arg(long, env = "CORRAL_GRPC_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:50051", value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Folder of agent components (`*.wasm`), watched for changes.
    #[arg(long, default_value = "agents", env = "CORRAL_AGENTS")]
    agents: PathBuf,
    /// Data folder: the SQLite database and the compiled-code cache.
    #[arg(long, default_value = "data", env = "CORRAL_DATA")]
    data: PathBuf,
    /// Compiled-code cache folder (trusted: only the host writes it) [default: DATA/compiled].
    #[arg(long, env = "CORRAL_CACHE")]
    cache: Option<PathBuf>,
    /// Operator policy file (TOML); the built-in policy when absent.
    #[arg(long, env = "CORRAL_POLICY")]
    policy: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// File holding the key the secrets file is sealed with (64 hex characters). Or set
    /// CORRAL_SECRETS_KEY to the hex key. Without a key the host has no secrets.
    #[arg(long, env = "CORRAL_SECRETS_KEY_FILE", value_name = "FILE")]
    secrets_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct IdentityArgs {
    /// Data folder of the host.
    #[arg(long, default_value = "data", env = "CORRAL_DATA")]
    data: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The agent crate or workspace (folder with a Cargo.toml).
    #[arg(default_value = "agents")]
    path: PathBuf,
    /// Where the components go.
    #[arg(long, default_value = "agents")]
    out: PathBuf,
    /// Build without optimizations.
    #[arg(long)]
    debug: bool,
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_json);
            let secrets_key = match secrets_key(args.secrets_key_file.as_deref()) {
                Ok(key) => key,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = corral::server::ServeOptions {
                listen: args.listen,
                grpc_listen: args.grpc_listen,
                agents_dir: args.agents,
                data_dir: args.data,
                cache_dir: args.cache,
                policy: args.policy,
                secrets_key,
            };
            match runtime.block_on(corral::server::serve(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Build(args) => {
            let manifest = if args.path.is_dir() { args.path.join("Cargo.toml") } else { args.path };
            match corral::build::build_agents(&manifest, &args.out, !args.debug) {
                Ok(built) => {
                    for agent in built {
                        eprintln!("built {}", agent.path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Identity(args) => identity(&args),
        Command::Client(cmd) => runtime.block_on(corral::cli::run(cli.client, cmd)),
    }
}

/// `corral identity`: the host's ASP agent id and public key.
#[allow(clippy::print_stdout)] // the command's output
fn identity(args: &IdentityArgs) -> ExitCode {
    match corral::asp::identity::Identity::load_or_create(&args.data) {
        Ok(identity) => {
            let public_key = corral::asp::signing::public_key_b64(&identity.public_key());
            if args.json {
                println!("{}", serde_json::json!({ "agent_id": identity.agent_id, "public_key": public_key }));
            } else {
                println!("agent id    {}\npublic key  {public_key}", identity.agent_id);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The secrets key: from `--secrets-key-file`, else the `CORRAL_SECRETS_KEY` variable (read from
/// the environment only, so it never appears on a command line), else none.
fn secrets_key(file: Option<&std::path::Path>) -> Result<Option<corral::secrets::Key>, String> {
    if let Some(path) = file {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read the secrets key file {}: {e}", path.display()))?;
        return corral::secrets::parse_key(&text).map(Some).map_err(|e| format!("{}: {e}", path.display()));
    }
    match std::env::var("CORRAL_SECRETS_KEY") {
        Ok(hex) => corral::secrets::parse_key(hex.as_bytes()).map(Some).map_err(|e| format!("CORRAL_SECRETS_KEY: {e}")),
        Err(_) => Ok(None),
    }
}
