//! `[sink.*]`: the delivery targets.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserNameSource {
    /// `userName` = the work e-mail address.
    #[default]
    Email,
    /// `userName` = the AFAS employee key.
    Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Deprovision {
    /// Leavers get `active = false` (what Entra and Okta do).
    #[default]
    Deactivate,
    /// Leavers are deleted at the target.
    Delete,
}

/// How an employee without a known target id is matched to a user the
/// target already holds (`sink.scim.match`), tried in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MatchRule {
    #[serde(rename = "externalId")]
    ExternalId,
    #[serde(rename = "userName")]
    UserName,
    #[serde(rename = "emails")]
    Emails,
}

impl MatchRule {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchRule::ExternalId => "externalId",
            MatchRule::UserName => "userName",
            MatchRule::Emails => "emails",
        }
    }
}

fn default_match() -> Vec<MatchRule> {
    vec![MatchRule::ExternalId, MatchRule::UserName, MatchRule::Emails]
}

/// Which matched users afas-sync takes over (`sink.scim.adopt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Adopt {
    /// Users without an `externalId`.
    #[default]
    Unlinked,
    /// Also users linked to another system's `externalId`.
    Any,
    /// None: a matched user is a conflict.
    Never,
}

/// What happens to target users no employee matches (`sink.scim.unmanaged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unmanaged {
    /// Left as they are (reported by the dry run and `afas-sync unmanaged`).
    #[default]
    Keep,
    /// Deactivated once every change is delivered, like leavers: held for
    /// approval above the leaver guards.
    Deactivate,
}

/// How a change reaches a user the target holds (`sink.scim.update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMode {
    /// PATCH where the target supports it, PUT otherwise; a PATCH the
    /// target cannot apply (501, 500 twice) moves the sink to PUT.
    #[default]
    Auto,
    Patch,
    Put,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScim {
    url: String,
    token_file: Option<PathBuf>,
    oauth_token_url: Option<String>,
    oauth_client_id: Option<String>,
    oauth_client_secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    user_name: UserNameSource,
    #[serde(default)]
    deprovision: Deprovision,
    #[serde(default = "default_sink_timeout")]
    timeout_secs: u64,
    /// Employee field → attribute path(s) of the target; see the README.
    #[serde(default)]
    attributes: BTreeMap<String, AttrTargets>,
    #[serde(default = "default_released_user_name")]
    released_user_name: String,
    /// Use SCIM Bulk where the target announces it.
    #[serde(default = "default_true")]
    bulk: bool,
    #[serde(default = "default_match", rename = "match")]
    match_rules: Vec<MatchRule>,
    #[serde(default)]
    adopt: Adopt,
    #[serde(default)]
    update: UpdateMode,
    #[serde(default)]
    unmanaged: Unmanaged,
}

fn default_true() -> bool {
    true
}

/// One attribute path, several, or none (`[]` or `""`: not sent).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum AttrTargets {
    One(String),
    Many(Vec<String>),
}

pub(super) fn default_released_user_name() -> String {
    "released-{key}@afas-sync.invalid".into()
}

pub(super) fn default_sink_timeout() -> u64 {
    30
}

#[derive(Debug, Clone)]
pub enum ScimAuth {
    Bearer(Secret),
    OAuth {
        token_url: url::Url,
        client_id: String,
        client_secret: Secret,
    },
}

#[derive(Debug, Clone)]
pub struct ScimConfig {
    /// The SCIM base URL (the one `/Users` hangs off).
    pub url: url::Url,
    pub auth: ScimAuth,
    pub ca_file: Option<PathBuf>,
    pub user_name: UserNameSource,
    pub deprovision: Deprovision,
    pub timeout: std::time::Duration,
    /// Employee field name → attribute paths (empty: not sent), over the
    /// defaults the sink derives from what the target declares.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The `userName` a user gets when its value must be freed for another
    /// employee (`{key}` = the AFAS employee key).
    pub released_user_name: String,
    /// Changes travel in SCIM Bulk requests where the target announces
    /// them (`bulk.supported`).
    pub bulk: bool,
    /// How users the target already holds are matched, in order.
    pub match_rules: Vec<MatchRule>,
    pub adopt: Adopt,
    pub update: UpdateMode,
    pub unmanaged: Unmanaged,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: String,
    secret_file: Option<PathBuf>,
    #[serde(default = "default_sink_timeout")]
    timeout_secs: u64,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: url::Url,
    /// `whsec_…` secrets, newest first; every one signs each message, so a
    /// receiver can rotate without missing an event.
    pub secrets: Vec<Secret>,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory for `afas-sync-run-<run>-<date>.ndjson` files.
    pub dir: PathBuf,
    /// Also write a CSV of the full snapshot per run.
    #[serde(default)]
    pub csv_snapshot: bool,
    /// The files' mode, octal: `0600` (only the service's user) unless the
    /// consumer reads them through a group (`0640`); never readable by all.
    #[serde(default = "default_file_mode")]
    pub file_mode: String,
}

fn default_file_mode() -> String {
    "0600".into()
}

impl FilesConfig {
    /// The validated [`FilesConfig::file_mode`].
    pub fn mode(&self) -> u32 {
        parse_file_mode(&self.file_mode).unwrap_or(0o600)
    }
}

fn parse_file_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m & 0o007 == 0 && *m & 0o600 == 0o600 && *m <= 0o770)
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSinks {
    scim: Option<RawScim>,
    webhook: Option<RawWebhook>,
    files: Option<FilesConfig>,
}

/// The configured delivery targets.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    pub scim: Option<ScimConfig>,
    pub webhook: Option<WebhookConfig>,
    pub files: Option<FilesConfig>,
}

impl Sinks {
    /// The kinds configured, in delivery order.
    pub fn kinds(&self) -> Vec<crate::model::SinkKind> {
        use crate::model::SinkKind;
        [
            self.scim.is_some().then_some(SinkKind::Scim),
            self.webhook.is_some().then_some(SinkKind::Webhook),
            self.files.is_some().then_some(SinkKind::Files),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

pub(super) fn sink_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key, "must be an https:// URL"));
    }
    Ok(url)
}

pub(super) fn validate_sinks(raw: RawSinks, base_dir: &Path, warnings: &mut Vec<String>) -> Result<Sinks, ConfigError> {
    let scim = raw.scim.map(|r| validate_scim(r, base_dir, warnings)).transpose()?;
    let webhook = raw
        .webhook
        .map(|r| validate_webhook(r, base_dir, warnings))
        .transpose()?;
    let files = match raw.files {
        None => None,
        Some(mut f) => {
            if f.dir.as_os_str().is_empty() {
                return Err(invalid("sink.files.dir", "must name a directory"));
            }
            if f.dir.is_relative() {
                f.dir = base_dir.join(&f.dir);
            }
            if parse_file_mode(&f.file_mode).is_none() {
                return Err(invalid(
                    "sink.files.file_mode",
                    "an octal mode the service's user can read and write, and others cannot read (\"0600\", \"0640\")",
                ));
            }
            Some(f)
        }
    };
    Ok(Sinks { scim, webhook, files })
}

fn validate_scim(r: RawScim, base_dir: &Path, warnings: &mut Vec<String>) -> Result<ScimConfig, ConfigError> {
    let url = sink_url("sink.scim.url", &r.url)?;
    let auth = match (&r.oauth_token_url, &r.oauth_client_id) {
        (Some(token_url), Some(client_id)) => ScimAuth::OAuth {
            token_url: sink_url("sink.scim.oauth_token_url", token_url)?,
            client_id: client_id.clone(),
            client_secret: load_secret(
                "sink.scim.oauth_client_secret_file",
                r.oauth_client_secret_file.as_deref(),
                "scim_oauth_client_secret",
                base_dir,
                warnings,
            )?,
        },
        (None, None) => ScimAuth::Bearer(load_secret(
            "sink.scim.token_file",
            r.token_file.as_deref(),
            "scim_token",
            base_dir,
            warnings,
        )?),
        _ => {
            return Err(invalid(
                "sink.scim.oauth_token_url",
                "set both oauth_token_url and oauth_client_id, or neither (bearer token)",
            ))
        }
    };
    if let Some(ca) = &r.ca_file {
        let ca = if ca.is_relative() {
            base_dir.join(ca)
        } else {
            ca.clone()
        };
        if !ca.exists() {
            return Err(invalid("sink.scim.ca_file", format!("{} does not exist", ca.display())));
        }
    }
    if r.timeout_secs == 0 || r.timeout_secs > 600 {
        return Err(invalid("sink.scim.timeout_secs", "must be 1 to 600 seconds"));
    }
    let mut attributes = BTreeMap::new();
    for (name, targets) in &r.attributes {
        if crate::fields::Field::parse(name).is_none() {
            return Err(invalid(
                &format!("sink.scim.attributes.{name}"),
                format!(
                    "not an employee field; one of {}, budget.<name>, leave.<type>",
                    crate::fields::Field::names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let paths = match targets {
            AttrTargets::One(p) if p.trim().is_empty() => Vec::new(),
            AttrTargets::One(p) => vec![p.trim().to_string()],
            AttrTargets::Many(v) => v
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        };
        attributes.insert(name.clone(), paths);
    }
    if !r.released_user_name.contains("{key}") {
        return Err(invalid(
            "sink.scim.released_user_name",
            "must contain {key}, so every released user gets a value of its own",
        ));
    }
    let mut seen = Vec::new();
    for rule in &r.match_rules {
        if seen.contains(rule) {
            return Err(invalid("sink.scim.match", format!("{} is listed twice", rule.as_str())));
        }
        seen.push(*rule);
    }
    Ok(ScimConfig {
        url,
        auth,
        ca_file: r
            .ca_file
            .map(|ca| if ca.is_relative() { base_dir.join(ca) } else { ca }),
        user_name: r.user_name,
        deprovision: r.deprovision,
        timeout: std::time::Duration::from_secs(r.timeout_secs),
        attributes,
        released_user_name: r.released_user_name,
        bulk: r.bulk,
        match_rules: r.match_rules,
        adopt: r.adopt,
        update: r.update,
        unmanaged: r.unmanaged,
    })
}

fn validate_webhook(r: RawWebhook, base_dir: &Path, warnings: &mut Vec<String>) -> Result<WebhookConfig, ConfigError> {
    let url = sink_url("sink.webhook.url", &r.url)?;
    let text = load_secret(
        "sink.webhook.secret_file",
        r.secret_file.as_deref(),
        "webhook_secret",
        base_dir,
        warnings,
    )?;
    let mut secrets = Vec::new();
    for (i, line) in text
        .expose()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let ok = line.strip_prefix("whsec_").is_some_and(|b| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).is_ok_and(|k| k.len() >= 16)
        });
        if !ok {
            return Err(ConfigError::Secret {
                key: "sink.webhook.secret_file".into(),
                reason: format!(
                    "line {}: expected whsec_ followed by base64 of at least 16 bytes",
                    i + 1
                ),
            });
        }
        secrets.push(Secret::new(line));
    }
    if r.timeout_secs == 0 || r.timeout_secs > 600 {
        return Err(invalid("sink.webhook.timeout_secs", "must be 1 to 600 seconds"));
    }
    Ok(WebhookConfig {
        url,
        secrets,
        timeout: std::time::Duration::from_secs(r.timeout_secs),
    })
}
