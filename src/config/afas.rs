//! `[afas]`: where AFAS is, how afas-sync signs in, and which GetConnectors it reads.

use super::*;

/// AFAS hosts its environments on three host name patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Production,
    Test,
    Accept,
}

impl Environment {
    pub fn host_infix(self) -> &'static str {
        match self {
            Environment::Production => "rest",
            Environment::Test => "resttest",
            Environment::Accept => "restaccept",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// The App Connector token from step 7 of the setup.
    #[default]
    Token,
    /// OAuth 2 client credentials (AFAS's successor to the token).
    Oauth,
}

/// How the OAuth client authenticates at AFAS's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// The client id and secret as HTTP Basic credentials.
    ClientSecretBasic,
    /// A JWT signed with a private key; no shared secret.
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PagingMode {
    /// `key > last seen key`, ordered by key: cannot skip or repeat rows when
    /// rows are inserted or deleted during a run, and stays fast at depth.
    #[default]
    Keyset,
    /// Plain `skip`/`take`; allows parallel pages but can shift rows.
    Skip,
}

/// A GetConnector to read and the unique key it is ordered and paged on.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub connector: String,
    /// Field ids forming a unique key, in order; a `-` prefix sorts descending.
    pub key: Vec<String>,
    /// `false` switches an optional connector off (e.g. no contracts
    /// connector: the employee row's dates are used).
    // Not serialized at its default: the mapping fingerprint (which holds a
    // run when the mapping changes) must not change when an upgrade merely
    // adds a field. Every new mapping field needs the same treatment.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAfas {
    profit_id: Option<String>,
    #[serde(default)]
    environment: Environment,
    base_url: Option<String>,
    #[serde(default)]
    auth: AuthMethod,
    token_file: Option<PathBuf>,
    oauth_client_id: Option<String>,
    oauth_client_secret_file: Option<PathBuf>,
    #[serde(default)]
    oauth_client_auth: ClientAuthMethod,
    oauth_private_key_file: Option<PathBuf>,
    oauth_signing_alg: Option<crate::oauth::jwt::Alg>,
    oauth_client_secret_expires: Option<DateInput>,
    integration_id: Option<String>,
    #[serde(default = "default_page_size")]
    page_size: u32,
    #[serde(default = "default_concurrency")]
    concurrency: u32,
    #[serde(default)]
    paging: PagingMode,
    #[serde(default = "default_request_timeout")]
    request_timeout_secs: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: u64,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_max_retry_wait")]
    max_retry_wait_secs: u64,
    #[serde(default = "default_employees_connector", deserialize_with = "employees_section")]
    employees: ConnectorConfig,
    #[serde(default = "default_contracts_connector", deserialize_with = "contracts_section")]
    contracts: Option<ConnectorConfig>,
    salary: Option<ConnectorConfig>,
    wage_components: Option<ConnectorConfig>,
    leave: Option<ConnectorConfig>,
}

pub(super) fn default_page_size() -> u32 {
    1000
}

pub(super) fn default_concurrency() -> u32 {
    4
}

pub(super) fn default_request_timeout() -> u64 {
    120
}

pub(super) fn default_connect_timeout() -> u64 {
    10
}

pub(super) fn default_max_retries() -> u32 {
    5
}

pub(super) fn default_max_retry_wait() -> u64 {
    300
}

pub(super) fn default_employees_connector() -> ConnectorConfig {
    ConnectorConfig {
        connector: "Profit_Employees_Alleo".into(),
        key: vec!["EmployeeId".into()],
        enabled: true,
    }
}

/// A connector section as written: every key may be left out and takes
/// the documented default of its section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PartialConnector {
    connector: Option<String>,
    key: Option<Vec<String>>,
    enabled: Option<bool>,
}

impl PartialConnector {
    fn over(self, d: ConnectorConfig) -> ConnectorConfig {
        ConnectorConfig {
            connector: self.connector.unwrap_or(d.connector),
            key: self.key.unwrap_or(d.key),
            enabled: self.enabled.unwrap_or(d.enabled),
        }
    }
}

pub(super) fn employees_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ConnectorConfig, D::Error> {
    Ok(PartialConnector::deserialize(d)?.over(default_employees_connector()))
}

pub(super) fn contracts_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ConnectorConfig>, D::Error> {
    let partial = PartialConnector::deserialize(d)?;
    Ok(default_contracts_connector().map(|c| partial.over(c)))
}

pub(super) fn default_contracts_connector() -> Option<ConnectorConfig> {
    Some(ConnectorConfig {
        connector: "Profit_Contract".into(),
        key: vec!["EmployeeId".into(), "SequenceNumber".into()],
        enabled: true,
    })
}

/// How afas-sync authenticates to AFAS, with the secret already loaded.
#[derive(Debug, Clone)]
pub enum AfasAuth {
    /// The raw token text as the admin pasted it (XML, hex or base64);
    /// parsed by [`crate::afas::token::AppToken::parse`].
    Token(Secret),
    OAuth {
        client: crate::oauth::Client,
        /// When the client secret stops working, as AFAS showed it when
        /// the secret was made (`afas.oauth_client_secret_expires`).
        secret_expires: Option<jiff::civil::Date>,
    },
}

#[derive(Debug, Clone)]
pub struct AfasConfig {
    pub profit_id: Option<String>,
    pub environment: Environment,
    /// `https://{id}.rest.afas.online/ProfitRestServices` or the override.
    pub base_url: url::Url,
    pub auth: AfasAuth,
    pub integration_id: Option<String>,
    pub page_size: u32,
    pub concurrency: u32,
    pub paging: PagingMode,
    pub request_timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    pub max_retries: u32,
    pub max_retry_wait: std::time::Duration,
    pub employees: ConnectorConfig,
    pub contracts: Option<ConnectorConfig>,
    /// Optional salary connector (Alleo Flex Salary).
    pub salary: Option<ConnectorConfig>,
    /// Optional wage components connector (holiday allowance).
    pub wage_components: Option<ConnectorConfig>,
    /// Optional leave balances connector (Alleo Flex Leave).
    pub leave: Option<ConnectorConfig>,
}

/// Where AFAS is: `afas.base_url`, or the Profit ID's host in the chosen
/// environment.
fn base_url(raw: &RawAfas) -> Result<url::Url, ConfigError> {
    if let Some(id) = &raw.profit_id {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(
                "afas.profit_id",
                "must be the digits of your AFAS participant number, e.g. \"12345\"",
            ));
        }
    }
    Ok(match (&raw.base_url, &raw.profit_id) {
        (Some(url), _) => {
            let parsed = url::Url::parse(url).map_err(|e| invalid("afas.base_url", format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("afas.base_url", "must start with https://"));
            }
            parsed
        }
        (None, Some(id)) => url::Url::parse(&format!(
            "https://{id}.{}.afas.online/ProfitRestServices",
            raw.environment.host_infix()
        ))
        .map_err(|e| invalid("afas.profit_id", e.to_string()))?,
        (None, None) => {
            return Err(invalid(
                "afas.profit_id",
                "missing: set your Profit ID (setup step 7), or afas.base_url",
            ))
        }
    })
}

pub(super) fn validate_afas(
    raw: RawAfas,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<AfasConfig, ConfigError> {
    let base_url = base_url(&raw)?;
    if !(1..=8).contains(&raw.concurrency) {
        return Err(invalid(
            "afas.concurrency",
            format!(
                "must be 1 to 8 (AFAS advises at most 5-8 parallel calls), got {}",
                raw.concurrency
            ),
        ));
    }
    if !(1..=100_000).contains(&raw.page_size) {
        return Err(invalid(
            "afas.page_size",
            format!("must be 1 to 100000, got {}", raw.page_size),
        ));
    }
    if raw.request_timeout_secs == 0 || raw.request_timeout_secs > 3600 {
        return Err(invalid("afas.request_timeout_secs", "must be 1 to 3600 seconds"));
    }
    if raw.connect_timeout_secs == 0 || raw.connect_timeout_secs > 600 {
        return Err(invalid("afas.connect_timeout_secs", "must be 1 to 600 seconds"));
    }
    if !raw.employees.enabled {
        return Err(invalid(
            "afas.employees.enabled",
            "the employees connector cannot be switched off",
        ));
    }
    if raw.max_retries > 20 {
        return Err(invalid("afas.max_retries", "must be at most 20"));
    }
    for (name, conn) in [
        ("afas.employees", Some(&raw.employees)),
        ("afas.contracts", raw.contracts.as_ref()),
    ] {
        let Some(conn) = conn else { continue };
        if conn.connector.trim().is_empty() {
            return Err(invalid(&format!("{name}.connector"), "must not be empty"));
        }
        if conn.key.is_empty() || conn.key.iter().any(|k| k.trim_start_matches('-').is_empty()) {
            return Err(invalid(
                &format!("{name}.key"),
                "must list at least one field id, e.g. [\"EmployeeId\"]",
            ));
        }
    }
    let auth = match raw.auth {
        AuthMethod::Token => {
            let secret = load_secret(
                "afas.token_file",
                raw.token_file.as_deref(),
                "afas_token",
                base_dir,
                warnings,
            )?;
            AfasAuth::Token(secret)
        }
        AuthMethod::Oauth => oauth_auth(&raw, base_dir, warnings)?,
    };
    Ok(AfasConfig {
        profit_id: raw.profit_id,
        environment: raw.environment,
        base_url,
        auth,
        integration_id: raw.integration_id,
        page_size: raw.page_size,
        concurrency: raw.concurrency,
        paging: raw.paging,
        request_timeout: std::time::Duration::from_secs(raw.request_timeout_secs),
        connect_timeout: std::time::Duration::from_secs(raw.connect_timeout_secs),
        max_retries: raw.max_retries,
        max_retry_wait: std::time::Duration::from_secs(raw.max_retry_wait_secs),
        employees: raw.employees,
        contracts: raw.contracts.filter(|c| c.enabled),
        salary: raw.salary.filter(|c| c.enabled),
        wage_components: raw.wage_components.filter(|c| c.enabled),
        leave: raw.leave.filter(|c| c.enabled),
    })
}

fn oauth_auth(raw: &RawAfas, base_dir: &Path, warnings: &mut Vec<String>) -> Result<AfasAuth, ConfigError> {
    use crate::oauth::{jwt, Client, ClientAuth};
    let id = raw
        .oauth_client_id
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("afas.oauth_client_id", "required when afas.auth = \"oauth\""))?;
    let secret = |warnings: &mut Vec<String>| {
        load_secret(
            "afas.oauth_client_secret_file",
            raw.oauth_client_secret_file.as_deref(),
            "afas_oauth_client_secret",
            base_dir,
            warnings,
        )
    };
    let jwt_only = |key: &str, set: bool| {
        if set && raw.oauth_client_auth != ClientAuthMethod::PrivateKeyJwt {
            Err(invalid(
                key,
                "only used with afas.oauth_client_auth = \"private_key_jwt\"",
            ))
        } else {
            Ok(())
        }
    };
    jwt_only("afas.oauth_private_key_file", raw.oauth_private_key_file.is_some())?;
    jwt_only("afas.oauth_signing_alg", raw.oauth_signing_alg.is_some())?;
    let auth = match raw.oauth_client_auth {
        ClientAuthMethod::ClientSecretPost => ClientAuth::SecretPost(secret(warnings)?),
        ClientAuthMethod::ClientSecretBasic => ClientAuth::SecretBasic(secret(warnings)?),
        ClientAuthMethod::PrivateKeyJwt => {
            if raw.oauth_client_secret_file.is_some() || raw.oauth_client_secret_expires.is_some() {
                return Err(invalid(
                    "afas.oauth_client_secret_file",
                    "private_key_jwt uses no client secret: remove afas.oauth_client_secret_file and afas.oauth_client_secret_expires",
                ));
            }
            let pem = load_secret(
                "afas.oauth_private_key_file",
                raw.oauth_private_key_file.as_deref(),
                "afas_oauth_private_key",
                base_dir,
                warnings,
            )?;
            let key = jwt::SigningKey::from_pem(pem.expose().as_bytes(), raw.oauth_signing_alg).map_err(|e| {
                ConfigError::Secret {
                    key: "afas.oauth_private_key_file".into(),
                    reason: e.to_string(),
                }
            })?;
            ClientAuth::PrivateKeyJwt(std::sync::Arc::new(key))
        }
    };
    Ok(AfasAuth::OAuth {
        client: Client { id, auth },
        secret_expires: raw
            .oauth_client_secret_expires
            .as_ref()
            .map(|d| d.date("afas.oauth_client_secret_expires"))
            .transpose()?,
    })
}

/// A date written as a TOML date (`2027-05-28`) or a string (`"2027-05-28"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum DateInput {
    Toml(toml::value::Datetime),
    Text(String),
}

impl DateInput {
    fn date(&self, key: &str) -> Result<jiff::civil::Date, ConfigError> {
        let text = match self {
            DateInput::Toml(d) => d.to_string(),
            DateInput::Text(t) => t.clone(),
        };
        text.trim()
            .parse::<jiff::civil::Date>()
            .map_err(|_| invalid(key, format!("{text:?} is not a date; write it as YYYY-MM-DD")))
    }
}
