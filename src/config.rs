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
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the service looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/afas-sync/config.toml";

/// A secret value (token, client secret). Its `Debug` and `Display` never show
/// the content, so a stray `{:?}` in a log line cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfas {
    profit_id: Option<String>,
    #[serde(default)]
    environment: Environment,
    base_url: Option<String>,
    #[serde(default)]
    auth: AuthMethod,
    token_file: Option<PathBuf>,
    oauth_client_id: Option<String>,
    oauth_client_secret_file: Option<PathBuf>,
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

fn default_page_size() -> u32 {
    1000
}
fn default_concurrency() -> u32 {
    4
}
fn default_request_timeout() -> u64 {
    120
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_retries() -> u32 {
    5
}
fn default_max_retry_wait() -> u64 {
    300
}
fn default_employees_connector() -> ConnectorConfig {
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
struct PartialConnector {
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

fn employees_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ConnectorConfig, D::Error> {
    Ok(PartialConnector::deserialize(d)?.over(default_employees_connector()))
}

fn contracts_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ConnectorConfig>, D::Error> {
    let partial = PartialConnector::deserialize(d)?;
    Ok(default_contracts_connector().map(|c| partial.over(c)))
}

fn default_contracts_connector() -> Option<ConnectorConfig> {
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
        client_id: String,
        client_secret: Secret,
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

/// AFAS field ids of the employees connector. Defaults are the names in
/// Alleo's GetConnector templates (the "required fields" of Alleo's AFAS setup guide).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmployeeMapping {
    pub key: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub prefix: String,
    pub employment_start: String,
    pub employment_end: String,
    pub department: String,
    pub date_of_birth: String,
    /// The optional "Alleo access" custom field: when set, only employees with
    /// it true are in scope.
    pub access: Option<String>,
    /// Named budget fields: budget name → AFAS field id (decimal amounts).
    pub budgets: BTreeMap<String, String>,
}

impl Default for EmployeeMapping {
    fn default() -> Self {
        EmployeeMapping {
            key: "EmployeeId".into(),
            email: "Mail".into(),
            first_name: "FirstName".into(),
            last_name: "BirthName".into(),
            prefix: "PrefixBirthName".into(),
            employment_start: "EmploymentStart".into(),
            employment_end: "EmploymentEnd".into(),
            department: "Department".into(),
            date_of_birth: "DateOfBirth".into(),
            access: None,
            budgets: BTreeMap::new(),
        }
    }
}

/// AFAS field ids of the contracts connector.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContractMapping {
    pub employee_key: String,
    pub sequence: String,
    pub start: String,
    pub end: String,
    pub fte: String,
    pub hours_per_week: String,
}

impl Default for ContractMapping {
    fn default() -> Self {
        ContractMapping {
            employee_key: "EmployeeId".into(),
            sequence: "SequenceNumber".into(),
            start: "DateStart".into(),
            end: "DateEnd".into(),
            fte: "Fte".into(),
            hours_per_week: "HoursPerWeek".into(),
        }
    }
}

/// Field ids of the optional salary connector: one row per salary period.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SalaryMapping {
    pub employee_key: String,
    /// The date the salary applies from; the latest one on or before the
    /// sync date counts.
    pub start: String,
    pub amount: String,
}

impl Default for SalaryMapping {
    fn default() -> Self {
        SalaryMapping {
            employee_key: "EmployeeId".into(),
            start: "DateStart".into(),
            amount: "Salary".into(),
        }
    }
}

/// Field ids of the optional wage components connector, and the wage
/// component ids the customer shares for the holiday allowance.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WageComponentMapping {
    pub employee_key: String,
    pub component: String,
    pub amount: String,
    /// Wage component id of the holiday allowance accrual.
    pub holiday_allowance_accrual_id: Option<String>,
    /// Wage component id of the holiday allowance balance.
    pub holiday_allowance_balance_id: Option<String>,
}

impl Default for WageComponentMapping {
    fn default() -> Self {
        WageComponentMapping {
            employee_key: "EmployeeId".into(),
            component: "WageComponentId".into(),
            amount: "Amount".into(),
            holiday_allowance_accrual_id: None,
            holiday_allowance_balance_id: None,
        }
    }
}

/// Field ids of the optional leave connector: one row per leave type.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaveMapping {
    pub employee_key: String,
    pub leave_type: String,
    pub balance: String,
}

impl Default for LeaveMapping {
    fn default() -> Self {
        LeaveMapping {
            employee_key: "EmployeeId".into(),
            leave_type: "LeaveTypeId".into(),
            balance: "BalanceHours".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Mapping {
    pub employees: EmployeeMapping,
    pub contracts: ContractMapping,
    pub salary: SalaryMapping,
    pub wage_components: WageComponentMapping,
    pub leave: LeaveMapping,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The redb file. Defaults to `$STATE_DIRECTORY/afas-sync.redb` under
    /// systemd, else `/var/lib/afas-sync/afas-sync.redb`.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/afas-sync"));
        StoreConfig {
            path: dir.join("afas-sync.redb"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Wall-clock times of day, `HH:MM`.
    pub times: Vec<String>,
    /// IANA time zone for the schedule and for "today".
    pub time_zone: String,
    /// Each run starts up to this many seconds after its slot.
    pub jitter_secs: i64,
    /// A failed run is retried after 5, 15, 45 … minutes, at most this
    /// many times before the next slot.
    pub retries: u32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            times: vec!["04:00".into(), "20:00".into()],
            time_zone: "Europe/Amsterdam".into(),
            jitter_secs: 0,
            retries: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub bind: String,
    /// `/readyz` fails when the last successful sync is older than this.
    pub max_staleness_hours: i64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "127.0.0.1:9464".into(),
            max_staleness_hours: 26,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Provision joiners this many days before their start date.
    pub lead_days: i64,
    /// A provisioned employee missing from AFAS becomes a leaver only after
    /// this many consecutive successful runs.
    pub absent_runs_before_leaver: u32,
    /// MiB of fetched records a sync sorts in memory (employees and
    /// contracts each) before it sorts through temporary files in the
    /// state directory.
    pub sort_memory_mib: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            lead_days: 0,
            absent_runs_before_leaver: 2,
            sort_memory_mib: 24,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardsConfig {
    pub max_leavers: u64,
    pub max_leavers_percent: f64,
    pub max_rejected_percent: f64,
    pub max_source_shrink_percent: f64,
}

impl Default for GuardsConfig {
    fn default() -> Self {
        let g = crate::model::Guards::default();
        GuardsConfig {
            max_leavers: g.max_leavers,
            max_leavers_percent: g.max_leavers_percent,
            max_rejected_percent: g.max_rejected_percent,
            max_source_shrink_percent: g.max_source_shrink_percent,
        }
    }
}

impl GuardsConfig {
    pub fn guards(&self) -> crate::model::Guards {
        crate::model::Guards {
            max_leavers: self.max_leavers,
            max_leavers_percent: self.max_leavers_percent,
            max_rejected_percent: self.max_rejected_percent,
            max_source_shrink_percent: self.max_source_shrink_percent,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Runs and mutations are kept this many days.
    pub history_days: i64,
    /// A leaver's personal data is removed this many days after leaving.
    pub leaver_personal_data_days: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            history_days: 400,
            leaver_personal_data_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Employees delivered in parallel per sink (one employee's mutations
    /// always go in order).
    pub parallelism: u32,
    /// A mutation that could not be delivered for this long is dead-lettered
    /// (visible in `status` and metrics; `afas-sync outbox retry`).
    pub max_age_hours: u64,
    /// How long `afas-sync sync` keeps delivering before it exits.
    pub sync_wait_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            parallelism: 4,
            max_age_hours: 14 * 24,
            sync_wait_secs: 120,
        }
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScim {
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
}

/// One attribute path, several, or none (`[]` or `""`: not sent).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum AttrTargets {
    One(String),
    Many(Vec<String>),
}

fn default_released_user_name() -> String {
    "released-{key}@afas-sync.invalid".into()
}

fn default_sink_timeout() -> u64 {
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
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
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSinks {
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
            message: e.to_string().trim_end().to_string(),
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
        if !(1..=64).contains(&raw.delivery.parallelism) {
            return Err(invalid("delivery.parallelism", "must be 1 to 64"));
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

fn validate_afas(raw: RawAfas, base_dir: &Path, warnings: &mut Vec<String>) -> Result<AfasConfig, ConfigError> {
    if let Some(id) = &raw.profit_id {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(
                "afas.profit_id",
                "must be the digits of your AFAS participant number, e.g. \"12345\"",
            ));
        }
    }
    let base_url = match (&raw.base_url, &raw.profit_id) {
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
    };
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
        AuthMethod::Oauth => {
            let client_id = raw
                .oauth_client_id
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("afas.oauth_client_id", "required when afas.auth = \"oauth\""))?;
            let client_secret = load_secret(
                "afas.oauth_client_secret_file",
                raw.oauth_client_secret_file.as_deref(),
                "afas_oauth_client_secret",
                base_dir,
                warnings,
            )?;
            AfasAuth::OAuth {
                client_id,
                client_secret,
            }
        }
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

fn validate_mapping(m: &Mapping) -> Result<(), ConfigError> {
    let e = &m.employees;
    let fields = [
        ("mapping.employees.key", &e.key),
        ("mapping.employees.email", &e.email),
        ("mapping.employees.first_name", &e.first_name),
        ("mapping.employees.last_name", &e.last_name),
        ("mapping.employees.prefix", &e.prefix),
        ("mapping.employees.employment_start", &e.employment_start),
        ("mapping.employees.employment_end", &e.employment_end),
        ("mapping.employees.department", &e.department),
        ("mapping.employees.date_of_birth", &e.date_of_birth),
        ("mapping.contracts.employee_key", &m.contracts.employee_key),
        ("mapping.contracts.sequence", &m.contracts.sequence),
        ("mapping.contracts.start", &m.contracts.start),
        ("mapping.contracts.end", &m.contracts.end),
        ("mapping.contracts.fte", &m.contracts.fte),
        ("mapping.contracts.hours_per_week", &m.contracts.hours_per_week),
        ("mapping.salary.employee_key", &m.salary.employee_key),
        ("mapping.salary.start", &m.salary.start),
        ("mapping.salary.amount", &m.salary.amount),
        ("mapping.wage_components.employee_key", &m.wage_components.employee_key),
        ("mapping.wage_components.component", &m.wage_components.component),
        ("mapping.wage_components.amount", &m.wage_components.amount),
        ("mapping.leave.employee_key", &m.leave.employee_key),
        ("mapping.leave.leave_type", &m.leave.leave_type),
        ("mapping.leave.balance", &m.leave.balance),
    ];
    for (key, value) in fields {
        if value.trim().is_empty() {
            return Err(invalid(key, "must name an AFAS field id"));
        }
    }
    for (name, field) in &e.budgets {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                &format!("mapping.employees.budgets.{name}"),
                "budget names may contain only letters, digits and _",
            ));
        }
        if field.trim().is_empty() {
            return Err(invalid(
                &format!("mapping.employees.budgets.{name}"),
                "must name an AFAS field id",
            ));
        }
    }
    Ok(())
}

fn sink_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key, "must be an https:// URL"));
    }
    Ok(url)
}

fn validate_sinks(raw: RawSinks, base_dir: &Path, warnings: &mut Vec<String>) -> Result<Sinks, ConfigError> {
    let scim = match raw.scim {
        None => None,
        Some(r) => {
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
            Some(ScimConfig {
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
            })
        }
    };
    let webhook = match raw.webhook {
        None => None,
        Some(r) => {
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
            Some(WebhookConfig {
                url,
                secrets,
                timeout: std::time::Duration::from_secs(r.timeout_secs),
            })
        }
    };
    let files = match raw.files {
        None => None,
        Some(mut f) => {
            if f.dir.as_os_str().is_empty() {
                return Err(invalid("sink.files.dir", "must name a directory"));
            }
            if f.dir.is_relative() {
                f.dir = base_dir.join(&f.dir);
            }
            Some(f)
        }
    };
    Ok(Sinks { scim, webhook, files })
}

fn validate_rules(sync: &SyncConfig, guards: &GuardsConfig, retention: &RetentionConfig) -> Result<(), ConfigError> {
    if !(0..=365).contains(&sync.lead_days) {
        return Err(invalid("sync.lead_days", "must be 0 to 365 days"));
    }
    if !(1..=100).contains(&sync.absent_runs_before_leaver) {
        return Err(invalid("sync.absent_runs_before_leaver", "must be 1 to 100 runs"));
    }
    if !(1..=65536).contains(&sync.sort_memory_mib) {
        return Err(invalid("sync.sort_memory_mib", "must be 1 to 65536 MiB"));
    }
    for (key, v) in [
        ("guards.max_leavers_percent", guards.max_leavers_percent),
        ("guards.max_rejected_percent", guards.max_rejected_percent),
        ("guards.max_source_shrink_percent", guards.max_source_shrink_percent),
    ] {
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            return Err(invalid(key, format!("must be a percentage from 0 to 100, got {v}")));
        }
    }
    if retention.history_days < 1 {
        return Err(invalid("retention.history_days", "must be at least 1 day"));
    }
    if retention.leaver_personal_data_days < 0 {
        return Err(invalid("retention.leaver_personal_data_days", "must not be negative"));
    }
    Ok(())
}

fn validate_schedule(s: &ScheduleConfig) -> Result<(), ConfigError> {
    if s.times.is_empty() {
        return Err(invalid("schedule.times", "list at least one time, e.g. [\"04:00\"]"));
    }
    for t in &s.times {
        if crate::daemon::schedule::parse_time(t).is_none() {
            return Err(invalid(
                "schedule.times",
                format!("`{t}` is not a time of day like \"04:00\""),
            ));
        }
    }
    if !(0..=3600).contains(&s.jitter_secs) {
        return Err(invalid("schedule.jitter_secs", "must be 0 to 3600 seconds"));
    }
    if jiff::tz::TimeZone::get(&s.time_zone).is_err() {
        return Err(invalid(
            "schedule.time_zone",
            format!(
                "`{}` is not a known IANA time zone such as Europe/Amsterdam",
                s.time_zone
            ),
        ));
    }
    Ok(())
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

/// A fully commented example configuration. `config example` prints it and a
/// unit test proves it validates.
pub const EXAMPLE: &str = include_str!("../packaging/config.example.toml");
