//! `afas-sync demo`: the emulator with a generated company, scim2-server when
//! installed, the real daemon, two days synced and delivered.

use super::*;

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

pub(super) async fn demo(employees: u64, seed: u64) -> i32 {
    match demo_inner(employees, seed).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::FAILURE
        }
    }
}

/// scim2-server, when installed, as the demo's SCIM target.
pub(super) struct DemoScim {
    child: tokio::process::Child,
    url: String,
}

/// scim2-server (PyPI) on 127.0.0.1:`port`, taking `token` as its bearer
/// token, quiet, killed when its handle drops: the demo's SCIM target, and
/// the tests'. `extra` are more scim2-server arguments.
pub fn scim2_server(exe: &std::ffi::OsStr, port: u16, token: &str, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(extra)
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
        .kill_on_drop(true);
    cmd
}

pub(super) async fn start_demo_scim(token: &str) -> Option<DemoScim> {
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
    let child = scim2_server(exe.as_os_str(), port, token, &[]).spawn().ok()?;
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

pub(super) async fn demo_call(cfg: &Config, req: Request) -> Result<render::Out, String> {
    match crate::daemon::control::call(cfg, &req, &mut |_| {}).await? {
        Some(result) => Ok(render::render(&result, false).0),
        None => Err("the daemon does not answer on its control socket".into()),
    }
}

/// Writes the demo's config file (AFAS, the file sink, SCIM when there).
fn demo_config(dir: &Path, afas_url: &str, scim_url: Option<&str>, scim_token: &str) -> Result<PathBuf, String> {
    let mut sinks = format!("[sink.files]\ndir = \"{}\"\n", dir.join("out").display());
    if let Some(url) = scim_url {
        write_secret_file(&dir.join("scim-token"), scim_token).map_err(|e| e.to_string())?;
        sinks.push_str(&format!(
            "\n[sink.scim]\nurl = \"{}\"\ntoken_file = \"scim-token\"\n",
            url
        ));
    }
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let config_text = format!(
        "[afas]\nbase_url = \"{}\"\ntoken_file = \"afas-token\"\npage_size = 100\n\n{}\n[store]\npath = \"{}\"\n\n[http]\nbind = \"127.0.0.1:{http_port}\"\n\n{sinks}",
        afas_url,
        EXTRA_CONNECTORS,
        dir.join("state.redb").display()
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, &config_text).map_err(|e| e.to_string())?;
    Ok(config_path)
}

/// Checks that the SCIM target holds every employee of the snapshot, and
/// says so.
async fn scim_matches(cfg: &Config, url: &str, scim_token: &str) -> Result<(), String> {
    let count = |filter: &'static str| {
        let url = format!("{}/Users?count=0{filter}", url);
        let token = scim_token.to_string();
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
    let (employed, known) = match crate::daemon::control::call(cfg, &Request::Status, &mut |_| {}).await? {
        Some(Ok(app::Reply::Status(s))) => (s.active, s.active + s.left),
        _ => return Err("the daemon does not answer on its control socket".into()),
    };
    println!("SCIM target: {all} users, {active} active; the snapshot: {known} employees, {employed} active");
    if all != known || active != employed {
        return Err("the SCIM target does not hold every employee of the snapshot".into());
    }
    Ok(())
}

/// A few of the daemon's metrics, scraped as Prometheus would.
async fn print_metrics(cfg: &Config) -> Result<(), String> {
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
    Ok(())
}

pub(super) async fn demo_inner(employees: u64, seed: u64) -> Result<(), String> {
    crate::net::install_crypto_provider();
    let dir = tempfile::Builder::new()
        .prefix("afas-sync-demo")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let token = random_token()?;
    let day = today();
    let (auth, key_pem) = demo_app_connector(&token)?;
    let state = EmulatorState::new(vec![("day 1".into(), data::generate(seed, employees, day))], auth);
    let emu = Emulator::start_local(state).await.map_err(|e| e.to_string())?;
    write_secret_file(&dir.path().join("afas-token"), &token.to_xml()).map_err(|e| e.to_string())?;
    let scim_token = format!("demo-{}", &random_token()?.data()[..24]);
    let scim = start_demo_scim(&scim_token).await;
    let config_path = demo_config(
        dir.path(),
        &emu.base_url(),
        scim.as_ref().map(|s| s.url.as_str()),
        &scim_token,
    )?;
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
    print_checks(&cfg, |_| true).await;

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
    // The daemon runs in this process: its progress shows here.
    let first = super::watch::bars_at_terminal();
    let waited = first_run(&cfg, &daemon).await;
    if let Some(w) = first {
        w.finish().await;
    }
    waited?;

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
    let second = super::watch::bars_at_terminal();
    let out = demo_call(
        &cfg,
        Request::Sync {
            as_of: Some(day2),
            dry_run: false,
        },
    )
    .await;
    if let Some(w) = second {
        w.finish().await;
    }
    let out = out?;
    print!("{}", out.stdout);
    let day3 = day2.checked_add(jiff::ToSpan::day(1)).map_err(|e| e.to_string())?;
    let cfg = move_to_oauth(&emu, dir.path(), &config_path, &key_pem, day3).await?;
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
        scim_matches(&cfg, &s.url, &scim_token).await?;
    }
    print_metrics(&cfg).await?;
    let _ = stop_tx.send(());
    let _ = daemon.await;
    if let Some(mut s) = scim {
        let _ = s.child.kill().await;
    }
    emu.stop().await;
    Ok(())
}

/// Waits (up to a minute) for the daemon's first import.
async fn first_run<T>(cfg: &Config, daemon: &tokio::task::JoinHandle<T>) -> Result<(), String> {
    for _ in 0..600 {
        let out = demo_call(cfg, Request::History { limit: 5 }).await.unwrap_or_default();
        if out.stdout.lines().count() > 1 {
            return Ok(());
        }
        if daemon.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err("the daemon did not complete its first run".into())
}

/// `check`'s lines whose name `show` accepts.
async fn print_checks(cfg: &Config, show: impl Fn(&str) -> bool) {
    for item in crate::check::run(cfg).await.iter().filter(|i| show(&i.name)) {
        println!("  {} {:<40} {}", item.label(), item.name, item.detail);
    }
}

/// The emulator's App connector: on the classic token, as every
/// customer's is today, with an OAuth client (for day 3) that knows the
/// key made here. Returns the key as PEM.
fn demo_app_connector(token: &crate::afas::token::AppToken) -> Result<(AuthSetup, String), String> {
    use crate::oauth::jwt;
    let key_pem = jwt::generate_p256().map_err(|e| e.to_string())?;
    let public = jwt::SigningKey::from_pem(key_pem.as_bytes(), None)
        .map_err(|e| e.to_string())?
        .public_key_pem();
    let mut auth = AuthSetup::token(token.clone());
    auth.oauth_key = Some((
        DEMO_CLIENT.into(),
        jwt::VerifyingKey::from_pem(public.as_bytes()).map_err(|e| e.to_string())?,
    ));
    auth.mode = crate::emulator::ConnectorMode::Token;
    Ok((auth, key_pem))
}

/// The demo's OAuth client id at the emulator.
const DEMO_CLIENT: &str = "alleo-demo";

/// Day 3: the move from the classic token to OAuth (README, "Moving from the
/// App Connector token to OAuth"), with the daemon running: the App
/// connector goes to Hybrid, the config gets the OAuth keys
/// (`private_key_jwt`), `check`, a reload (SIGHUP), the day's sync signs in
/// with OAuth, and the connector then accepts OAuth only.
async fn move_to_oauth(
    emu: &Emulator,
    dir: &Path,
    config_path: &Path,
    key_pem: &str,
    day3: jiff::civil::Date,
) -> Result<Config, String> {
    println!();
    println!("day 3: AFAS retires the classic token; moving to OAuth with the daemon running");
    emu.state.set_connector_mode(crate::emulator::ConnectorMode::Hybrid);
    println!("  in AFAS: the App connector is switched to Hybrid (token and OAuth both work)");
    write_secret_file(&dir.join("afas_oauth_private_key"), key_pem).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(config_path).map_err(|e| e.to_string())?;
    let text = text.replace(
        "token_file = \"afas-token\"",
        &format!("auth = \"oauth\"\noauth_client_id = \"{DEMO_CLIENT}\"\noauth_client_auth = \"private_key_jwt\"\noauth_private_key_file = \"afas_oauth_private_key\""),
    );
    std::fs::write(config_path, text).map_err(|e| e.to_string())?;
    let cfg = Config::load(config_path).map_err(|e| e.to_string())?.config;
    print_checks(&cfg, |name| name.starts_with("AFAS")).await;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .map_err(|e| format!("cannot send SIGHUP: {e}"))?;
    if !hup.success() {
        return Err("kill -HUP failed".into());
    }
    println!("  the daemon reloads its configuration (SIGHUP)");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    emu.state.clear_log();
    let out = demo_call(
        &cfg,
        Request::Sync {
            as_of: Some(day3),
            dry_run: false,
        },
    )
    .await?;
    print!("{}", out.stdout);
    let requests = emu.state.requests();
    let oauth = requests.iter().filter(|r| r.auth_scheme == "Bearer").count();
    let classic = requests.iter().filter(|r| r.auth_scheme == "AfasToken").count();
    if oauth == 0 || classic > 0 {
        return Err(format!(
            "the reload did not take the OAuth config: {oauth} OAuth and {classic} classic-token requests"
        ));
    }
    emu.state.set_connector_mode(crate::emulator::ConnectorMode::OAuth);
    println!("  the run signed in with OAuth ({oauth} requests, none with the token)");
    println!("  in AFAS: the App connector now accepts OAuth only; the token file can go");
    Ok(cfg)
}
