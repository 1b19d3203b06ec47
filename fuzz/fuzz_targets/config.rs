#![no_main]
//! The configuration parser: any TOML is accepted or refused with an error
//! that names a key, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Secret files resolve under a directory that does not exist.
    let _ = afas_sync::config::Config::from_toml(&text, std::path::Path::new("/nonexistent-afas-sync-fuzz/config.toml"));
});
