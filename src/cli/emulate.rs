//! `afas-sync emulate`: the AFAS emulator as a process of its own.

use super::*;

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

pub(super) fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
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

pub(super) async fn emulate(args: &EmulateArgs) -> i32 {
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
    let mut auth = match emulator_auth(args, token) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    auth.mode = emulator::ConnectorMode::parse(&args.connector_mode).unwrap_or(emulator::ConnectorMode::Hybrid);
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

/// The emulator's App connector from the command line's OAuth options.
fn emulator_auth(args: &EmulateArgs, token: afas::token::AppToken) -> Result<AuthSetup, String> {
    let mut auth = AuthSetup::token(token);
    let Some(id) = &args.oauth_client_id else {
        return Ok(auth);
    };
    if args.oauth_secret_file.is_none() && args.oauth_public_key.is_none() {
        return Err("--oauth-client-id needs --oauth-secret-file or --oauth-public-key".into());
    }
    if let Some(file) = &args.oauth_secret_file {
        let s = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --oauth-secret-file {}: {e}", file.display()))?;
        auth.oauth = Some((id.clone(), s.trim().to_string()));
    }
    if let Some(file) = &args.oauth_public_key {
        let pem = std::fs::read(file).map_err(|e| format!("cannot read --oauth-public-key {}: {e}", file.display()))?;
        let key = crate::oauth::jwt::VerifyingKey::from_pem(&pem)
            .map_err(|e| format!("--oauth-public-key {}: {e}", file.display()))?;
        auth.oauth_key = Some((id.clone(), key));
    }
    if let Some(date) = args.oauth_secret_expires {
        auth.oauth_secret_expires = date.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    Ok(auth)
}
