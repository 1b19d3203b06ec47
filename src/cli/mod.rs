//! The command line: clap definitions and the human / `--json` rendering.
//! Every command returns an exit code; `main` only sets up logging.

pub mod render;

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

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Queue dead-lettered entries again and make waiting ones due now
    /// (of one sink, or all).
    Retry {
        #[arg(long)]
        sink: Option<String>,
    },
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
    /// Also accept OAuth client credentials with this client id; the secret
    /// is read from --oauth-secret-file.
    #[arg(long, requires = "oauth_secret_file")]
    pub oauth_client_id: Option<String>,
    #[arg(long)]
    pub oauth_secret_file: Option<PathBuf>,
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    crate::afas::client::install_crypto_provider();
    let url = format!("http://{}/readyz", cfg.http.bind);
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
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
    };
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
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let (out, code) = render::render(&result, cli.json);
    out.print();
    code
}

/// Runs a parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", config::EXAMPLE);
            exit::OK
        }
        Command::Config {
            action: ConfigAction::Check,
        } => match load_config(&cli.config) {
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
        },
        Command::Check => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let items = crate::check::run(&cfg).await;
            let ok = items.iter().all(|i| i.ok);
            if cli.json {
                let list: Vec<_> = items
                    .iter()
                    .map(|i| json!({"check": i.name, "ok": i.ok, "detail": i.detail}))
                    .collect();
                println!("{}", json!({"ok": ok, "checks": list}));
            } else {
                for i in &items {
                    println!("{} {:<40} {}", if i.ok { "PASS" } else { "FAIL" }, i.name, i.detail);
                }
            }
            if ok {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
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
        Command::Sync { dry_run, as_of } => {
            state_request(
                &cli,
                Request::Sync {
                    as_of: *as_of,
                    dry_run: *dry_run,
                },
            )
            .await
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
        Command::Outbox {
            action: OutboxAction::Retry { sink },
        } => state_request(&cli, Request::OutboxRetry { sink: sink.clone() }).await,
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

/// A random token for the emulator and the demo, from the OS's entropy via
/// the std hasher's random keys (no extra dependency for a test secret).
pub fn random_token() -> Result<afas::token::AppToken, String> {
    use std::hash::{BuildHasher, Hasher};
    let mut hex = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        hex.push_str(&format!("{:016X}", h.finish()));
    }
    // 64 hex characters by construction; still, no panic path.
    afas::token::AppToken::parse(&hex).map_err(|e| e.to_string())
}

fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")
}

async fn emulate(args: &EmulateArgs) -> i32 {
    let token = if args.token_file.exists() {
        let text = match std::fs::read_to_string(&args.token_file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read --token-file {}: {e}", args.token_file.display());
                return exit::CONFIG;
            }
        };
        match afas::token::AppToken::parse(&text) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: --token-file {}: {e}", args.token_file.display());
                return exit::CONFIG;
            }
        }
    } else {
        let t = match random_token() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot make a token: {e}");
                return exit::FAILURE;
            }
        };
        if let Err(e) = write_secret_file(&args.token_file, &t.to_xml()) {
            eprintln!("error: cannot create --token-file {}: {e}", args.token_file.display());
            return exit::CONFIG;
        }
        eprintln!("wrote a new emulator token to {}", args.token_file.display());
        t
    };
    let mut auth = AuthSetup::token(token);
    if let (Some(id), Some(file)) = (&args.oauth_client_id, &args.oauth_secret_file) {
        match std::fs::read_to_string(file) {
            Ok(s) => auth.oauth = Some((id.clone(), s.trim().to_string())),
            Err(e) => {
                eprintln!("error: cannot read --oauth-secret-file {}: {e}", file.display());
                return exit::CONFIG;
            }
        }
    }
    let days = match &args.fixtures {
        Some(dir) => match data::Dataset::load_scenario(dir) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::CONFIG;
            }
        },
        None => vec![(
            "generated".to_string(),
            data::generate(args.seed, args.employees, today()),
        )],
    };
    let state = EmulatorState::new(days, auth);
    state.set_latency(Duration::from_millis(args.latency_ms));
    for spec in &args.fail {
        let parsed = spec
            .split_once(':')
            .and_then(|(n, s)| Some((n.parse::<u64>().ok()?, s.parse::<u16>().ok()?)));
        let Some((n, status)) = parsed else {
            eprintln!("error: --fail `{spec}`: expected N:STATUS, e.g. 3:503");
            return exit::CONFIG;
        };
        let action = if status == 503 {
            emulator::FaultAction::Maintenance { retry_after: 1 }
        } else {
            emulator::FaultAction::Status {
                status,
                body: String::new(),
            }
        };
        state.add_rule(emulator::FaultRule::new("/connectors/", n, 1, action));
    }
    let listener = match tokio::net::TcpListener::bind(&args.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on --bind {}: {e}", args.bind);
            return exit::CONFIG;
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("AFAS emulator listening: base_url = \"http://{addr}/ProfitRestServices\"");
    println!("days: {}", state.day_names().join(", "));
    emulator::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    exit::OK
}

/// Today in Europe/Amsterdam, the calendar AFAS dates are written in.
pub fn today() -> jiff::civil::Date {
    jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::get("Europe/Amsterdam").unwrap_or(jiff::tz::TimeZone::UTC))
        .date()
}

/// The optional salary, holiday allowance and leave connectors of the
/// generated company (setup step 5, "additional GetConnectors").
pub const EXTRA_CONNECTORS: &str = r#"[afas.salary]
connector = "Profit_Salary_Alleo"
key = ["EmployeeId", "DateStart"]

[afas.wage_components]
connector = "Profit_WageComponents_Alleo"
key = ["EmployeeId", "WageComponentId"]

[afas.leave]
connector = "Profit_Leave_Alleo"
key = ["EmployeeId", "LeaveTypeId"]

[mapping.wage_components]
holiday_allowance_accrual_id = "5100"
holiday_allowance_balance_id = "5110"
"#;

async fn demo(employees: u64, seed: u64) -> i32 {
    match demo_inner(employees, seed).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::FAILURE
        }
    }
}

/// scim2-server, when installed, as the demo's SCIM target.
struct DemoScim {
    child: tokio::process::Child,
    url: String,
}

async fn start_demo_scim(token: &str) -> Option<DemoScim> {
    let exe = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("scim2-server"))
        .find(|p| p.exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = tokio::process::Command::new(exe)
        .args([
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--bearer-token",
            token,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let up = client
            .get(format!("{url}/ServiceProviderConfig"))
            .bearer_auth(token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            return Some(DemoScim { child, url });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

async fn demo_call(cfg: &Config, req: Request) -> Result<render::Out, String> {
    match crate::daemon::control::call(cfg, &req, &mut |_| {}).await? {
        Some(result) => Ok(render::render(&result, false).0),
        None => Err("the daemon does not answer on its control socket".into()),
    }
}

async fn demo_inner(employees: u64, seed: u64) -> Result<(), String> {
    crate::afas::client::install_crypto_provider();
    let dir = tempfile::Builder::new()
        .prefix("afas-sync-demo")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let token = random_token()?;
    let day = today();
    let state = EmulatorState::new(
        vec![("day 1".into(), data::generate(seed, employees, day))],
        AuthSetup::token(token.clone()),
    );
    let emu = Emulator::start_local(state).await.map_err(|e| e.to_string())?;
    write_secret_file(&dir.path().join("afas-token"), &token.to_xml()).map_err(|e| e.to_string())?;
    let scim_token = format!("demo-{}", &random_token()?.data()[..24]);
    let scim = start_demo_scim(&scim_token).await;
    let mut sinks = format!("[sink.files]\ndir = \"{}\"\n", dir.path().join("out").display());
    if let Some(s) = &scim {
        write_secret_file(&dir.path().join("scim-token"), &scim_token).map_err(|e| e.to_string())?;
        sinks.push_str(&format!(
            "\n[sink.scim]\nurl = \"{}\"\ntoken_file = \"scim-token\"\n",
            s.url
        ));
    }
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let config_text = format!(
        "[afas]\nbase_url = \"{}\"\ntoken_file = \"afas-token\"\npage_size = 100\n\n{}\n[store]\npath = \"{}\"\n\n[http]\nbind = \"127.0.0.1:{http_port}\"\n\n{sinks}",
        emu.base_url(),
        EXTRA_CONNECTORS,
        dir.path().join("state.redb").display()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config_text).map_err(|e| e.to_string())?;
    let cfg = Config::load(&config_path).map_err(|e| e.to_string())?.config;

    println!(
        "afas-sync demo: AFAS emulator with a generated company of {employees} at {}",
        emu.base_url()
    );
    println!("state directory: {}", dir.path().display());
    match &scim {
        Some(s) => println!(
            "SCIM target: scim2-server at {} (RFC 7643's schemas only, as a SaaS target serves)",
            s.url
        ),
        None => println!("SCIM target: none (install scim2-server from PyPI to include it)"),
    }
    println!();
    for item in crate::check::run(&cfg).await {
        println!(
            "  {} {:<40} {}",
            if item.ok { "PASS" } else { "FAIL" },
            item.name,
            item.detail
        );
    }

    // The real daemon: it opens the state file, serves HTTP and the control
    // socket, and runs the first import at once (no run has happened yet).
    let listener = tokio::net::TcpListener::bind(&cfg.http.bind)
        .await
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(crate::daemon::run(
        config_path.clone(),
        cfg.clone(),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut waited = 0;
    loop {
        let out = demo_call(&cfg, Request::History { limit: 5 }).await.unwrap_or_default();
        if out.stdout.lines().count() > 1 {
            break;
        }
        waited += 1;
        if waited > 600 || daemon.is_finished() {
            return Err("the daemon did not complete its first run".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Day 2: hires, leavers and department changes in AFAS.
    let day2 = day.checked_add(jiff::ToSpan::day(1)).map_err(|e| e.to_string())?;
    let churned = emu.state.with_data(|d| data::churn(d, seed, day2, 20, 10, 40));
    println!();
    println!(
        "day 2 in AFAS: {} hired, {} left, {} changed department; syncing through the daemon",
        churned.joiners.len(),
        churned.leavers.len(),
        churned.movers.len()
    );
    let out = demo_call(
        &cfg,
        Request::Sync {
            as_of: Some(day2),
            dry_run: false,
        },
    )
    .await?;
    print!("{}", out.stdout);
    let history = demo_call(&cfg, Request::History { limit: 5 }).await?;
    println!();
    print!("{}", history.stdout);
    let files: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!();
    println!(
        "file sink: {} files in {}",
        files.len(),
        dir.path().join("out").display()
    );
    if let Some(s) = &scim {
        let count = |filter: &'static str| {
            let url = format!("{}/Users?count=0{filter}", s.url);
            let token = scim_token.clone();
            async move {
                let v: serde_json::Value = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(v["totalResults"].as_u64().unwrap_or(0))
            }
        };
        let all = count("").await?;
        let active = count("&filter=active%20eq%20true").await?;
        let (employed, known) = match crate::daemon::control::call(&cfg, &Request::Status, &mut |_| {}).await? {
            Some(Ok(app::Reply::Status(s))) => (s.active, s.active + s.left),
            _ => return Err("the daemon does not answer on its control socket".into()),
        };
        println!("SCIM target: {all} users, {active} active; the snapshot: {known} employees, {employed} active");
        if all != known || active != employed {
            return Err("the SCIM target does not hold every employee of the snapshot".into());
        }
    }
    let metrics_url = format!("http://{}/metrics", cfg.http.bind);
    let metrics = reqwest::Client::new()
        .get(&metrics_url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    println!();
    println!("Prometheus metrics at {metrics_url} (while the daemon runs), e.g.:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("afas_sync_runs_total")
            || l.starts_with("afas_sync_mutations_total")
            || l.starts_with("afas_sync_employees")
    }) {
        println!("  {line}");
    }
    let _ = stop_tx.send(());
    let _ = daemon.await;
    if let Some(mut s) = scim {
        let _ = s.child.kill().await;
    }
    emu.stop().await;
    Ok(())
}
