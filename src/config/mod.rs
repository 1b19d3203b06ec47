//! The TOML configuration file, turned into a validated [`Config`].
//!
//! Parsing is strict on purpose: an admin who mistypes `emplyees` must hear
//! about it at start-up, not discover months later that a default was used.
//! Every section rejects unknown keys, and every check that serde cannot do
//! (ranges, combinations) reports the dotted key it is about.
//!
//! Secrets never live in the file itself: they come from a `*_file` key or
//! from systemd credentials (`$CREDENTIALS_DIRECTORY/<name>`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod afas;
mod mapping;
mod rules;
mod sinks;

pub use afas::*;
pub use mapping::*;
pub use rules::*;
pub use sinks::*;

/// Where the service looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/afas-sync/config.toml";

pub use crate::model::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Pass --config PATH or create {default}", default = DEFAULT_CONFIG_PATH)]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("secret for `{key}`: {reason}")]
    Secret { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    afas: RawAfas,
    #[serde(default)]
    mapping: Mapping,
    #[serde(default)]
    store: StoreConfig,
    #[serde(default)]
    schedule: ScheduleConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    sync: SyncConfig,
    #[serde(default)]
    guards: GuardsConfig,
    #[serde(default)]
    retention: RetentionConfig,
    #[serde(default)]
    delivery: DeliveryConfig,
    #[serde(default)]
    sink: RawSinks,
    /// Opt-in to `http://` URLs to hosts other than this machine: tokens,
    /// secrets and personal data then cross the network unencrypted.
    #[serde(default)]
    send_secrets_over_plain_http: bool,
}

/// Whether a URL's host is this machine (the emulator, a local proxy).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Refuses `http://` to another host unless the config opts in by name:
/// the AFAS token, OAuth secrets, the SCIM bearer and every employee's data
/// would travel in the clear after one typo.
fn refuse_plain_http(urls: &[(&str, &url::Url)], allowed: bool, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    for (key, url) in urls {
        if url.scheme() != "http" || is_loopback(url) {
            continue;
        }
        if !allowed {
            return Err(invalid(
                key,
                format!(
                    "`http://{}` would send secrets and personal data unencrypted to another host: use https://, \
                     or set send_secrets_over_plain_http = true at the top of the file if you accept that risk",
                    url.host_str().unwrap_or("")
                ),
            ));
        }
        warnings.push(format!(
            "{key} uses plain http:// to {}: secrets and personal data travel unencrypted (send_secrets_over_plain_http = true)",
            url.host_str().unwrap_or("")
        ));
    }
    Ok(())
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub afas: AfasConfig,
    pub mapping: Mapping,
    pub store: StoreConfig,
    pub schedule: ScheduleConfig,
    pub http: HttpConfig,
    pub sync: SyncConfig,
    pub guards: GuardsConfig,
    pub retention: RetentionConfig,
    pub delivery: DeliveryConfig,
    pub sinks: Sinks,
}

/// A loaded config plus the warnings found on the way (loose file modes),
/// which the caller logs once its logger is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// `origin` names the file in messages and anchors relative secret paths.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Loaded, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: parse_message(text, &e),
        })?;
        let mut warnings = Vec::new();
        let base_dir = origin.parent().unwrap_or(Path::new("."));
        let afas = validate_afas(raw.afas, base_dir, &mut warnings)?;
        validate_mapping(&raw.mapping)?;
        validate_schedule(&raw.schedule)?;
        if raw.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.bind",
                format!("`{}` is not an address like 127.0.0.1:9464", raw.http.bind),
            ));
        }
        validate_rules(&raw.sync, &raw.guards, &raw.retention)?;
        if !(16..=65536).contains(&raw.delivery.window) {
            return Err(invalid("delivery.window", "must be 16 to 65536 entries"));
        }
        if !(1..=256).contains(&raw.delivery.max_parallelism) {
            return Err(invalid("delivery.max_parallelism", "must be 1 to 256"));
        }
        if !(1..=raw.delivery.max_parallelism).contains(&raw.delivery.parallelism) {
            return Err(invalid(
                "delivery.parallelism",
                format!(
                    "must be 1 to delivery.max_parallelism ({})",
                    raw.delivery.max_parallelism
                ),
            ));
        }
        if raw.delivery.max_age_hours == 0 {
            return Err(invalid("delivery.max_age_hours", "must be at least 1 hour"));
        }
        let sinks = validate_sinks(raw.sink.clone(), base_dir, &mut warnings)?;
        let mut urls: Vec<(&str, &url::Url)> = vec![("afas.base_url", &afas.base_url)];
        if let Some(scim) = &sinks.scim {
            urls.push(("sink.scim.url", &scim.url));
            if let ScimAuth::OAuth { token_url, .. } = &scim.auth {
                urls.push(("sink.scim.oauth_token_url", token_url));
            }
        }
        if let Some(w) = &sinks.webhook {
            urls.push(("sink.webhook.url", &w.url));
        }
        refuse_plain_http(&urls, raw.send_secrets_over_plain_http, &mut warnings)?;
        let w = &raw.mapping.wage_components;
        if afas.wage_components.is_some()
            && w.holiday_allowance_accrual_id.is_none()
            && w.holiday_allowance_balance_id.is_none()
        {
            return Err(invalid(
                "mapping.wage_components.holiday_allowance_accrual_id",
                "afas.wage_components is set, so name the wage component ids for holiday allowance accrual and/or balance (the ids shared in setup step 5)",
            ));
        }
        Ok(Loaded {
            config: Config {
                afas,
                mapping: raw.mapping,
                store: raw.store,
                schedule: raw.schedule,
                http: raw.http,
                sync: raw.sync,
                guards: raw.guards,
                retention: raw.retention,
                delivery: raw.delivery,
                sinks,
            },
            warnings,
        })
    }
}

/// Loads a secret from an explicit file, else from the systemd credential
/// `credential` in `$CREDENTIALS_DIRECTORY`.
pub fn load_secret(
    key: &str,
    file: Option<&Path>,
    credential: &str,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let path = match file {
        Some(p) if p.is_relative() => base_dir.join(p),
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join(credential),
            None => {
                return Err(ConfigError::Secret {
                    key: key.into(),
                    reason: format!(
                        "not set: point `{key}` at a file holding it, or pass the systemd credential `{credential}` (LoadCredential=)"
                    ),
                })
            }
        },
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Secret {
        key: key.into(),
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "secret file {} (for `{key}`) is readable by group or others; run: chmod 600 {}",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    let value = text.trim();
    if value.is_empty() {
        return Err(ConfigError::Secret {
            key: key.into(),
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret::new(value))
}

/// A TOML error as "line L, column C: what", never the text of the line
/// (it may be a token pasted under a misspelled key), and with any quoted
/// value a type error repeats left out.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let mut what = String::new();
    let mut quoted = false;
    for c in e.message().trim_end().chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                what.push_str("\"…");
            }
            '"' => {
                quoted = false;
                what.push('"');
            }
            _ if quoted => {}
            _ => what.push(c),
        }
    }
    let Some(span) = e.span() else {
        return what;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The key of that line (never its value), under its table.
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text
        .lines()
        .take(line)
        .filter_map(|l| l.trim().strip_prefix('[')?.split(']').next())
        .last()
        .map(|t| t.trim_matches(['[', ' ']));
    match (table, key) {
        (Some(t), Some(k)) => format!("line {line}, column {column}, key `{t}.{k}`: {what}"),
        (None, Some(k)) => format!("line {line}, column {column}, key `{k}`: {what}"),
        _ => format!("line {line}, column {column}: {what}"),
    }
}

/// A fully commented example configuration. `config example` prints it and a
/// unit test proves it validates.
pub const EXAMPLE: &str = include_str!("../../packaging/config.example.toml");
