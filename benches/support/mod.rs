//! What both benchmarks start with: a two-worker runtime (the machine's
//! cores) and the AFAS emulator on loopback, with no data yet.

#![allow(dead_code)]

pub mod measure;

use std::sync::Arc;

use afas_sync::afas::token::AppToken;
use afas_sync::emulator::{AuthSetup, Emulator, EmulatorState};

pub fn runtime_and_emulator(
    token_hex: &str,
) -> Result<(tokio::runtime::Runtime, Emulator, Arc<EmulatorState>), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let token = AppToken::parse(token_hex).map_err(|e| e.to_string())?;
    let state = EmulatorState::new(vec![("bench".into(), Default::default())], AuthSetup::token(token));
    let emulator = rt
        .block_on(Emulator::start_local(state.clone()))
        .map_err(|e| e.to_string())?;
    Ok((rt, emulator, state))
}

/// Writes the AFAS and SCIM token files a benchmark's config names, owner
/// only (as `check` wants them).
pub fn write_tokens(dir: &std::path::Path, afas: &str, scim: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for (name, secret) in [("afas-token", afas), ("scim-token", scim)] {
        std::fs::write(dir.join(name), secret).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
