//! The run's rules and the daemon's settings: store, schedule, http, sync,
//! guards, retention, delivery.

use super::*;

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
    /// Employees delivered in parallel per sink when a pass starts (one
    /// employee's mutations always go in order); the sink adapts it to the
    /// target's answers, up to `max_parallelism`.
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// A mutation that could not be delivered for this long is dead-lettered
    /// (visible in `status` and metrics; `afas-sync outbox retry`).
    pub max_age_hours: u64,
    /// How long `afas-sync sync` keeps delivering before it exits.
    pub sync_wait_secs: u64,
    /// Outbox entries a pass reads and holds at a time (whole employees'
    /// chains): what bounds its memory, whatever the outbox holds.
    pub window: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            parallelism: 4,
            max_parallelism: 64,
            max_age_hours: 14 * 24,
            sync_wait_secs: 120,
            window: 2048,
        }
    }
}

pub(super) fn validate_rules(
    sync: &SyncConfig,
    guards: &GuardsConfig,
    retention: &RetentionConfig,
) -> Result<(), ConfigError> {
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

pub(super) fn validate_schedule(s: &ScheduleConfig) -> Result<(), ConfigError> {
    if s.times.is_empty() {
        return Err(invalid("schedule.times", "list at least one time, e.g. [\"04:00\"]"));
    }
    for t in &s.times {
        if parse_time(t).is_none() {
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

/// `HH:MM`, or `HH:MM:SS`.
pub fn parse_time(t: &str) -> Option<jiff::civil::Time> {
    jiff::civil::Time::strptime("%H:%M", t)
        .or_else(|_| jiff::civil::Time::strptime("%H:%M:%S", t))
        .ok()
}
