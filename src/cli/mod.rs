//! The command line: clap definitions and the human / `--json` rendering.
//! Every command returns an exit code; `main` only sets up logging.

mod demo;
mod emulate;
mod generate;
mod outbox;
pub mod render;
mod watch;

use demo::*;
pub use demo::{scim2_server, EXTRA_CONNECTORS};
use emulate::*;
pub use generate::{Generate, Shell};
pub use outbox::OutboxAction;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::afas::{self, AfasClient, ClientOptions};
use crate::app::{self, Deliver, Request};
use crate::config::{self, Config};
use crate::emulator::{self, data, AuthSetup, Emulator, EmulatorState};
use crate::exit;

#[derive(Debug, Parser)]
#[command(name = "afas-sync", version, about = "Sync employees from AFAS Profit to Alleo")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "AFAS_SYNC_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG filter).
    #[arg(long, global = true, env = "AFAS_SYNC_LOG")]
    pub log_level: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print or validate configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check config, token, AFAS reachability and the connectors' fields.
    Check,
    /// Ask a running daemon's /readyz (for container and monitor checks).
    Healthcheck,
    /// Read a connector and print its rows as NDJSON (for troubleshooting).
    Fetch {
        #[arg(long, value_enum, default_value = "employees")]
        connector: Which,
        /// Stop after this many rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Run the AFAS emulator on loopback.
    Emulate(EmulateArgs),
    /// Run one sync now: fetch, diff, commit (or hold).
    Sync {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Compute as of this date (YYYY-MM-DD) instead of today.
        #[arg(long)]
        as_of: Option<jiff::civil::Date>,
        /// One employee on demand: read only their rows, show every step,
        /// and (without --dry-run) commit and deliver their change alone.
        #[arg(long, value_name = "KEY")]
        employee: Option<String>,
    },
    /// Show the state: employees, last run, held plans, outbox.
    Status,
    /// List recent runs.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Without a subcommand: run the daemon (scheduled syncs, delivery,
    /// /healthz /readyz /metrics). `run show RUN` inspects one run.
    Run {
        #[command(subcommand)]
        action: Option<RunAction>,
    },
    /// Show one employee's stored record and history.
    Employee { key: String },
    /// Held plans: show, approve or reject.
    Plan {
        #[command(subcommand)]
        action: PlanAction,
    },
    /// Erase one employee everywhere in the state file.
    Forget { key: String },
    /// The delivery outbox.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// The SCIM target's users no employee matches; `--deactivate N`
    /// deactivates the N active ones listed.
    Unmanaged {
        /// The number of active ones `afas-sync unmanaged` listed.
        #[arg(long, value_name = "N")]
        deactivate: Option<u64>,
    },
    /// Print the snapshot.
    Export {
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ExportFormat,
    },
    /// Run the demo: the emulator with a generated company, read end to end.
    Demo {
        #[arg(long, default_value_t = 250)]
        employees: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Print the man page or a shell's completions (the packages ship both).
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print a fully commented example configuration.
    Example,
    /// Validate the configuration file and print a summary (no secrets).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum RunAction {
    /// Show a run, its mutations and its rejected rows.
    Show { run: u64 },
}

#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Show held plans (all, or one run's).
    Show { run: Option<u64> },
    /// Apply a held plan exactly as computed.
    Approve { run: u64 },
    /// Drop a held plan.
    Reject { run: u64 },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Employees,
    Contracts,
}

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on (loopback only by intent).
    #[arg(long, default_value = "127.0.0.1:8095")]
    pub bind: String,
    /// Generate a company of this many employees.
    #[arg(long, default_value_t = 1000)]
    pub employees: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Serve fixture files instead (see README: one directory per day).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// The App Connector token to accept (any of the three forms). Created
    /// with a random token when the file does not exist.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Also accept OAuth client credentials with this client id: its
    /// secret from --oauth-secret-file, and/or (private_key_jwt) the public
    /// key its assertions are signed for, from --oauth-public-key.
    #[arg(long)]
    pub oauth_client_id: Option<String>,
    #[arg(long, requires = "oauth_client_id")]
    pub oauth_secret_file: Option<PathBuf>,
    /// A PEM public key (`openssl pkey -in KEY -pubout`).
    #[arg(long, requires = "oauth_client_id")]
    pub oauth_public_key: Option<PathBuf>,
    /// The client secret stops working on this date (YYYY-MM-DD).
    #[arg(long, requires = "oauth_secret_file")]
    pub oauth_secret_expires: Option<jiff::civil::Date>,
    /// What the App connector accepts: token, hybrid (both) or oauth.
    /// Switch it while running with `POST /ProfitRestServices/_emulator/connector/MODE`.
    #[arg(long, default_value = "hybrid", value_parser = ["token", "hybrid", "oauth"])]
    pub connector_mode: String,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer the Nth connector request with a status: `N:STATUS` (repeatable).
    #[arg(long)]
    pub fail: Vec<String>,
}

/// Sets up logging to stderr. Secrets are never passed to tracing, and
/// header values are marked sensitive, so even `trace` shows none.
pub fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    // Colour only for a person at a terminal: a pipe, a file or the
    // journal gets plain text, and NO_COLOR (no-color.org) turns it off.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| watch::LogWriter)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

fn load_config(path: &Path) -> Result<Config, i32> {
    match Config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            Ok(loaded.config)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::CONFIG)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn healthcheck(cfg: &Config) -> i32 {
    crate::net::install_crypto_provider();
    let url = format!("http://{}/readyz", cfg.http.bind);
    let client = match crate::net::client(&crate::net::ClientSpec {
        timeout: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            let body = r.text().await.unwrap_or_default();
            println!("{body}");
            if ok {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: the daemon does not answer at {url}: {e}");
            exit::FAILURE
        }
    }
}

/// Runs a state-file command: through a running daemon's control socket,
/// else on the state file directly; either way rendered here.
async fn state_request(cli: &Cli, req: Request) -> i32 {
    let cfg = match load_config(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // An export streams: its rows are written as they come, header first.
    let csv = matches!(req, Request::Export { csv: true });
    if csv {
        println!("{}", render::CSV_HEADER);
    }
    let mut row = |p: &crate::model::Provisioned| {
        use std::io::Write;
        let _ = std::io::stdout()
            .lock()
            .write_all(render::export_line(p, csv).as_bytes());
        crate::progress::exported(1);
    };
    // Long work shows what it is doing: sync, export, outbox retry.
    let long = matches!(
        req,
        Request::Sync { .. } | Request::SyncEmployee { .. } | Request::Export { .. } | Request::OutboxRetry { .. }
    );
    let daemon = crate::daemon::control::socket_path(&cfg).exists();
    // An export's rows on the terminal would be torn by bars drawn beside.
    let rows_on_screen = matches!(req, Request::Export { .. }) && {
        use std::io::IsTerminal;
        std::io::stdout().is_terminal()
    };
    let watch = long.then(|| {
        watch::start(
            cli.json || rows_on_screen,
            if daemon && !matches!(req, Request::Export { .. }) {
                watch::Source::Daemon(Box::new(cfg.clone()))
            } else {
                watch::Source::Local
            },
        )
    });
    let result = match crate::daemon::control::call(&cfg, &req, &mut row).await {
        Ok(Some(result)) => result,
        Ok(None) => {
            let store = match crate::store::Store::open(&cfg.store.path) {
                Ok(s) => std::sync::Arc::new(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            };
            app::handle(&cfg, &store, &req, Deliver::Wait, &mut row).await
        }
        Err(e) => {
            if let Some(w) = watch {
                w.finish().await;
            }
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if let Some(w) = watch {
        w.finish().await;
    }
    crate::progress::idle();
    let (out, code) = render::render(&result, cli.json);
    out.print();
    code
}

/// `config check`: validates the file and prints a summary without secrets.
fn config_check(cli: &Cli) -> i32 {
    match load_config(&cli.config) {
        Ok(cfg) => {
            if cli.json {
                println!(
                    "{}",
                    json!({"valid": true, "base_url": cfg.afas.base_url.as_str(), "employees_connector": cfg.afas.employees.connector,
                    "contracts_connector": cfg.afas.contracts.as_ref().map(|c| c.connector.as_str())})
                );
            } else {
                println!("config {} is valid", cli.config.display());
                println!("  AFAS:       {}", cfg.afas.base_url);
                println!(
                    "  connectors: {}{}",
                    cfg.afas.employees.connector,
                    cfg.afas
                        .contracts
                        .as_ref()
                        .map(|c| format!(", {}", c.connector))
                        .unwrap_or_default()
                );
                println!("  store:      {}", cfg.store.path.display());
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// `check`: one PASS/FAIL line per item.
async fn check(cli: &Cli) -> i32 {
    let cfg = match load_config(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let items = crate::check::run(&cfg).await;
    let ok = items.iter().all(|i| i.ok);
    if cli.json {
        let list: Vec<_> = items
            .iter()
            .map(|i| json!({"check": i.name, "ok": i.ok, "warning": i.warn, "detail": i.detail}))
            .collect();
        println!("{}", json!({"ok": ok, "checks": list}));
    } else {
        for i in &items {
            println!("{} {:<40} {}", i.label(), i.name, i.detail);
        }
    }
    if ok {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// Runs a parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::Generate { what } => generate::run(what),
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", config::EXAMPLE);
            exit::OK
        }
        Command::Config {
            action: ConfigAction::Check,
        } => config_check(&cli),
        Command::Check => check(&cli).await,
        Command::Run { action: None } => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let listener = match tokio::net::TcpListener::bind(&cfg.http.bind).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on http.bind {}: {e}", cfg.http.bind);
                    return exit::FAILURE;
                }
            };
            match crate::daemon::run(cli.config.clone(), cfg, listener, stop_signal()).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILURE
                }
            }
        }
        Command::Healthcheck => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            healthcheck(&cfg).await
        }
        Command::Fetch { connector, limit } => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            fetch(&cfg, *connector, *limit).await
        }
        Command::Emulate(args) => emulate(args).await,
        Command::Sync {
            dry_run,
            as_of,
            employee,
        } => {
            let req = match employee {
                Some(key) => Request::SyncEmployee {
                    as_of: *as_of,
                    dry_run: *dry_run,
                    key: key.clone(),
                },
                None => Request::Sync {
                    as_of: *as_of,
                    dry_run: *dry_run,
                },
            };
            state_request(&cli, req).await
        }
        Command::Status => state_request(&cli, Request::Status).await,
        Command::History { limit } => state_request(&cli, Request::History { limit: *limit }).await,
        Command::Run {
            action: Some(RunAction::Show { run }),
        } => state_request(&cli, Request::RunShow { run: *run }).await,
        Command::Employee { key } => state_request(&cli, Request::Employee { key: key.clone() }).await,
        Command::Plan { action } => {
            let req = match action {
                PlanAction::Show { run } => Request::PlanShow { run: *run },
                PlanAction::Approve { run } => Request::PlanApprove { run: *run },
                PlanAction::Reject { run } => Request::PlanReject { run: *run },
            };
            state_request(&cli, req).await
        }
        Command::Forget { key } => state_request(&cli, Request::Forget { key: key.clone() }).await,
        Command::Export { format } => {
            state_request(
                &cli,
                Request::Export {
                    csv: matches!(format, ExportFormat::Csv),
                },
            )
            .await
        }
        Command::Outbox { action } => state_request(&cli, action.request()).await,
        Command::Unmanaged { deactivate } => {
            state_request(
                &cli,
                Request::Unmanaged {
                    deactivate: *deactivate,
                },
            )
            .await
        }
        Command::Demo { employees, seed } => demo(*employees, *seed).await,
    }
}

async fn fetch(cfg: &Config, which: Which, limit: Option<usize>) -> i32 {
    let client = match ClientOptions::from_config(&cfg.afas).and_then(AfasClient::new) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let conn = match which {
        Which::Employees => &cfg.afas.employees,
        Which::Contracts => match &cfg.afas.contracts {
            Some(c) => c,
            None => {
                eprintln!("error: config key `afas.contracts` is not set");
                return exit::CONFIG;
            }
        },
    };
    let mut rx = client.read(afas::read_spec_all(cfg, conn));
    let mut n = 0usize;
    while let Some(page) = rx.recv().await {
        match page {
            Ok(page) => {
                for bad in &page.bad_rows {
                    eprintln!("warning: page {}: {bad}", page.number);
                }
                for row in page.rows {
                    if limit.is_some_and(|l| n >= l) {
                        return exit::OK;
                    }
                    println!("{}", serde_json::Value::Object(row.into_json()));
                    n += 1;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        }
    }
    exit::OK
}

/// Today in Europe/Amsterdam, the calendar AFAS dates are written in.
pub fn today() -> jiff::civil::Date {
    jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::get("Europe/Amsterdam").unwrap_or(jiff::tz::TimeZone::UTC))
        .date()
}
