//! `afas-sync check`: every precondition of a sync, each with its own
//! pass/fail line, so an admin following the setup sees exactly which step
//! is missing.

use crate::afas::{self, AfasClient, AfasError, ClientOptions};
use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn item(name: &str, result: Result<String, String>) -> CheckItem {
    match result {
        Ok(detail) => CheckItem {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(detail) => CheckItem {
            name: name.into(),
            ok: false,
            detail,
        },
    }
}

/// Runs the AFAS checks. The config itself was validated by loading it.
pub async fn run(config: &Config) -> Vec<CheckItem> {
    let mut items = vec![item("config", Ok("valid".into()))];
    let opts = match ClientOptions::from_config(&config.afas) {
        Ok(o) => {
            items.push(item("token format", Ok("well-formed".into())));
            o
        }
        Err(e) => {
            items.push(item("token format", Err(e.to_string())));
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
