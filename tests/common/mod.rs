//! Shared test harness: a real emulator on 127.0.0.1, real config files in
//! temp directories, and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use afas_sync::afas::client::Credentials;
use afas_sync::afas::rows::JsonRow;
use afas_sync::afas::token::AppToken;
use afas_sync::afas::{AfasClient, ClientOptions};
use afas_sync::emulator::data::{ConnectorData, Dataset, FieldDef};
use afas_sync::emulator::{AuthSetup, Emulator, EmulatorState};
use serde_json::json;

pub const TOKEN_HEX: &str = "610C51AE2FFE4B2C8E33D5A5EB163E12735C72A44D98C278C5E7B5B560079BC1";

pub fn token() -> AppToken {
    AppToken::parse(TOKEN_HEX).expect("test token")
}

pub fn field(id: &str, t: &str) -> FieldDef {
    FieldDef {
        id: id.into(),
        data_type: t.into(),
        label: id.into(),
    }
}

/// A connector `Items` with `n` rows: `Id` 1..=n (int), `Group` = Id % 3
/// (string), `Name` text.
pub fn items(n: usize) -> Dataset {
    let rows = (1..=n)
        .map(|i| {
            let mut r = JsonRow::new();
            r.insert("Id".into(), json!(i));
            r.insert("Group".into(), json!(format!("g{}", i % 3)));
            r.insert("Name".into(), json!(format!("Item {i}")));
            r
        })
        .collect();
    let mut ds = Dataset::default();
    ds.connectors.insert(
        "Items".into(),
        ConnectorData {
            description: "test items".into(),
            fields: vec![field("Id", "int"), field("Group", "string"), field("Name", "string")],
            rows,
        },
    );
    ds
}

pub async fn spawn_emulator(ds: Dataset) -> Emulator {
    let state = EmulatorState::new(vec![("day1".into(), ds)], AuthSetup::token(token()));
    Emulator::start_local(state).await.expect("emulator starts")
}

pub async fn spawn_emulator_with(state: Arc<EmulatorState>) -> Emulator {
    Emulator::start_local(state).await.expect("emulator starts")
}

pub fn options(base_url: &str) -> ClientOptions {
    ClientOptions {
        base_url: url::Url::parse(base_url).expect("url"),
        credentials: Credentials::Token(token()),
        integration_id: None,
        concurrency: 4,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries: 3,
        max_retry_wait: Duration::from_secs(2),
        min_backoff: Duration::from_millis(5),
    }
}

pub fn client(base_url: &str) -> AfasClient {
    AfasClient::new(options(base_url)).expect("client")
}

/// Writes a config file (and token file, mode 0600) into `dir`.
pub fn write_config(dir: &Path, base_url: &str, token_text: &str, extra: &str) -> PathBuf {
    let token_path = dir.join("afas-token");
    std::fs::write(&token_path, token_text).expect("token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let path = dir.join("config.toml");
    let text = format!(
        "[afas]\nbase_url = \"{base_url}\"\ntoken_file = \"afas-token\"\nmax_retries = 1\nrequest_timeout_secs = 5\n{extra}\n\n[store]\npath = \"{}\"\n",
        dir.join("state.redb").display()
    );
    std::fs::write(&path, text).expect("config file");
    path
}

/// Runs the real binary with `args`; returns (exit code, stdout, stderr).
pub async fn run_bin(args: &[&str]) -> (i32, String, String) {
    run_bin_env(args, &[]).await
}

/// Like [`run_bin`], with extra environment variables.
pub async fn run_bin_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AFAS_SYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
pub mod peers;
pub mod quirks;
pub mod relay;
pub mod sync_env;

/// Polls `f` every 200 ms until it holds; panics naming `what` after `secs`.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the file at `path` (a daemon's log) contains `needle`.
pub async fn wait_for_log(path: &Path, needle: &str, secs: u64) {
    wait_for(needle, secs, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        async move { text.contains(needle) }
    })
    .await;
}

/// Starts `afas-sync sync --as-of DAY` quietly, to be killed or awaited.
pub fn spawn_sync(cfg: &str, as_of: jiff::civil::Date) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args([
            "--config",
            cfg,
            "--log-level",
            "error",
            "sync",
            "--as-of",
            &as_of.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn")
}
