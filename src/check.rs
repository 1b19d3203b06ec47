//! `afas-sync check`: every precondition of a sync, each with its own
//! pass/fail line, so an admin following the setup sees exactly which step
//! is missing.

use crate::afas::expiry::Expiry;
use crate::afas::{self, AfasClient, AfasError, ClientOptions};
use crate::config::{AfasAuth, Config};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    /// Passes, but needs attention soon (an expiring credential).
    pub warn: bool,
    pub detail: String,
}

impl CheckItem {
    pub fn label(&self) -> &'static str {
        match (self.ok, self.warn) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "PASS",
        }
    }
}

fn item(name: &str, result: Result<String, String>) -> CheckItem {
    match result {
        Ok(detail) => CheckItem {
            name: name.into(),
            ok: true,
            warn: false,
            detail,
        },
        Err(detail) => CheckItem {
            name: name.into(),
            ok: false,
            warn: false,
            detail,
        },
    }
}

/// Runs the AFAS checks. The config itself was validated by loading it.
pub async fn run(config: &Config) -> Vec<CheckItem> {
    let mut items = vec![item("config", Ok("valid".into())), state_item(&config.store.path)];
    let opts = match ClientOptions::from_config(&config.afas) {
        Ok(o) => {
            items.push(item("AFAS authentication", Ok(describe_auth(&config.afas.auth))));
            o
        }
        Err(e) => {
            items.push(item("AFAS authentication", Err(e.to_string())));
            return items;
        }
    };
    let client = match AfasClient::new(opts) {
        Ok(c) => c,
        Err(e) => {
            items.push(item("AFAS client", Err(e.to_string())));
            return items;
        }
    };
    match client.profit_version().await {
        Ok(v) => items.push(item(
            "AFAS reachable",
            Ok(format!("{} (Profit {v})", client.base_url())),
        )),
        // An answer that refuses the credentials still proves AFAS is there.
        Err(e @ (AfasError::Unauthorized { .. } | AfasError::Forbidden { .. } | AfasError::OAuth { .. })) => {
            items.push(item("AFAS reachable", Ok(client.base_url().to_string())));
            items.push(item("AFAS token accepted", Err(e.to_string())));
            return items;
        }
        Err(e) => {
            items.push(item("AFAS reachable", Err(e.to_string())));
            return items;
        }
    }
    match client.metainfo().await {
        Ok(meta) => {
            items.push(item(
                "AFAS token accepted",
                Ok(meta.info.app_name.clone().unwrap_or_else(|| "app connector".into())),
            ));
            let expiry = afas::expiry::publish_for(&config.afas, meta.info.token_expiry.as_deref());
            items.extend(expiry_item(expiry));
            for (_, conn) in afas::connectors(config) {
                let listed = meta
                    .get_connectors
                    .iter()
                    .any(|c| c.id.eq_ignore_ascii_case(&conn.connector));
                items.push(item(
                    &format!("connector {} allowed", conn.connector),
                    if listed {
                        Ok("listed in the App Connector".into())
                    } else {
                        Err(format!("GetConnector `{}` is not in this App Connector: add it under the App Connector's GetConnectors tab (setup step 6)", conn.connector))
                    },
                ));
            }
        }
        Err(e) => {
            let name = if matches!(e, AfasError::Unauthorized { .. } | AfasError::OAuth { .. }) {
                "AFAS token accepted"
            } else {
                "AFAS metainfo"
            };
            items.push(item(name, Err(e.to_string())));
            return items;
        }
    }
    items.extend(connector_fields(config, &client).await);
    items.extend(scim_items(config).await);
    items
}

/// Whether other local users can read the state (the company's personal
/// data): a warning, since the sync works either way.
fn state_item(path: &std::path::Path) -> CheckItem {
    let name = "state file private";
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o007 != 0);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let mut wide = Vec::new();
        if let Some(d) = dir.filter(|d| open(d) == Some(true)) {
            wide.push(format!("chmod 700 {}", d.display()));
        }
        if open(path) == Some(true) {
            wide.push(format!("chmod 600 {}", path.display()));
        }
        if !wide.is_empty() {
            return CheckItem {
                name: name.into(),
                ok: true,
                warn: true,
                detail: format!("other local users can read it: {}", wide.join("; ")),
            };
        }
    }
    let detail = if path.exists() {
        "only its owner can read it"
    } else {
        "made readable by its owner only at the first sync"
    };
    item(name, Ok(detail.into()))
}

/// How afas-sync signs in to AFAS, in the words of AFAS's screens.
fn describe_auth(auth: &AfasAuth) -> String {
    match auth {
        AfasAuth::Token(_) => "App Connector token (classic), well-formed".into(),
        AfasAuth::OAuth { client, .. } => {
            format!("OAuth client `{}`, {}", client.id, client.auth.describe())
        }
    }
}

/// When the credentials stop working: a WARN line in time.
fn expiry_item(expiry: Expiry) -> Option<CheckItem> {
    let today = jiff::Zoned::now().date();
    let name = "AFAS credentials expiry";
    let warn = |detail: String| CheckItem {
        name: name.into(),
        ok: true,
        warn: true,
        detail,
    };
    if let Some(w) = expiry.warning(today) {
        return Some(warn(w));
    }
    match expiry {
        Expiry::ClientSecret(Some(end)) => Some(item(name, Ok(format!("the client secret expires on {end}")))),
        Expiry::ClientSecret(None) => Some(warn(
            "the client secret's expiry date is not set: put the date AFAS showed when the secret was made (180 days later by default) in afas.oauth_client_secret_expires, so an alert warns 14 days before".into(),
        )),
        _ => None,
    }
}

/// Each connector has every mapped field (and its key) with a compatible type.
async fn connector_fields(config: &Config, client: &AfasClient) -> Vec<CheckItem> {
    let mut items = Vec::new();
    for (source, conn) in afas::connectors(config) {
        let name = format!("connector {} fields", conn.connector);
        let result = match client.connector_meta(&conn.connector).await {
            Ok(meta) => {
                let mut wanted = afas::mapped_fields(config, source);
                for k in &conn.key {
                    let k = k.trim_start_matches('-');
                    if !wanted.iter().any(|(f, _, _)| f == k) {
                        wanted.push((
                            k.to_string(),
                            afas::FieldKind::Text,
                            format!("afas.{}.key", source.name()),
                        ));
                    }
                }
                let problems = afas::client::check_fields(&conn.connector, &meta, &wanted);
                if problems.is_empty() {
                    Ok(format!("all {} mapped fields present", wanted.len()))
                } else {
                    Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        items.push(item(&name, result));
    }
    items
}

/// The SCIM target: reachable, what it declares, what the mapping delivers.
async fn scim_items(config: &Config) -> Vec<CheckItem> {
    let mut items = Vec::new();
    if let Some(scim) = &config.sinks.scim {
        match crate::delivery::scim::ScimSink::new(scim, None) {
            Ok(sink) => {
                for (name, result) in sink.check().await {
                    items.push(item(&name, result));
                }
            }
            Err(e) => items.push(item("SCIM sink", Err(e))),
        }
    }
    items
}
