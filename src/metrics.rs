//! The Prometheus registry and its series (`afas_sync_` prefix, units in
//! names, `_total` counters). One process-wide instance: the AFAS client,
//! the sync and the delivery worker record into it; `/metrics` encodes it.
//! No personal data ever becomes a label (connector, sink, kind, outcome,
//! reason class and status only).

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub connector: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub sink: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabels {
    pub sink: String,
    /// A fixed class (`model::Reason`), or `unknown`: never a target's text.
    pub reason: String,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub last_run: FGauge,
    pub last_success: FGauge,
    pub run_duration: Histogram,
    pub runs: Family<OutcomeLabels, Counter>,
    pub employees: Family<StateLabels, Gauge>,
    pub mutations: Family<KindLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub afas_requests: Family<RequestLabels, Counter>,
    pub afas_latency: Family<ConnectorLabels, Histogram>,
    pub outbox_pending: Family<SinkLabels, Gauge>,
    pub outbox_dead: Family<SinkLabels, Gauge>,
    pub outbox_dead_by_reason: Family<SinkReasonLabels, Gauge>,
    /// 1 while a sink is stopped (credentials refused, or the target
    /// refuses every change), else 0.
    pub sink_stopped: Family<SinkLabels, Gauge>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Deliveries a sink runs at once now (the adaptive limit).
    pub delivery_concurrency: Family<SinkLabels, Gauge>,
    /// Answers that asked for less (429, 503) or timed out, per sink.
    pub delivery_throttled: Family<SinkLabels, Counter>,
    pub sink_latency: Family<SinkLabels, Histogram>,
    pub held_plans: Gauge,
    /// Active target users no employee matches, held for approval.
    pub unmanaged_held: Family<SinkLabels, Gauge>,
    pub guard_held: Counter,
    pub token_expiry: FGauge,
    pub oauth_secret_expiry: FGauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register("afas_sync_build_info", "Build information (always 1)", build);
        let m = Metrics {
            last_run: FGauge::default(),
            last_success: FGauge::default(),
            run_duration: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
            runs: Family::default(),
            employees: Family::default(),
            mutations: Family::default(),
            rejected: Family::default(),
            afas_requests: Family::default(),
            afas_latency: Family::new_with_constructor(latency_histogram),
            outbox_pending: Family::default(),
            outbox_dead: Family::default(),
            outbox_dead_by_reason: Family::default(),
            sink_stopped: Family::default(),
            deliveries: Family::default(),
            delivery_concurrency: Family::default(),
            delivery_throttled: Family::default(),
            sink_latency: Family::new_with_constructor(latency_histogram),
            held_plans: Gauge::default(),
            unmanaged_held: Family::default(),
            guard_held: Counter::default(),
            token_expiry: FGauge::default(),
            oauth_secret_expiry: FGauge::default(),
            registry: Registry::default(),
        };
        m.register_runs(&mut r);
        m.register_afas_and_delivery(&mut r);
        // Every rejection reason at zero, so "none" is 0, not absent.
        for reason in REASON_CLASSES {
            let _ = m.rejected.get_or_create(&ReasonLabels {
                reason: (*reason).into(),
            });
        }
        Metrics { registry: r, ..m }
    }

    /// The runs, the snapshot and the guards.
    fn register_runs(&self, r: &mut Registry) {
        let m = self;
        r.register_with_unit(
            "afas_sync_last_run_timestamp",
            "When the last sync run finished (Unix time)",
            Unit::Seconds,
            m.last_run.clone(),
        );
        r.register_with_unit(
            "afas_sync_last_success_timestamp",
            "When the last successful sync run finished (Unix time)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        r.register_with_unit(
            "afas_sync_run_duration",
            "Duration of sync runs",
            Unit::Seconds,
            m.run_duration.clone(),
        );
        r.register(
            "afas_sync_runs",
            "Sync runs by outcome (success, nothing-to-do, held, failed)",
            m.runs.clone(),
        );
        r.register(
            "afas_sync_employees",
            "Provisioned employees by state (active, left)",
            m.employees.clone(),
        );
        r.register(
            "afas_sync_mutations",
            "Mutations committed, by kind",
            m.mutations.clone(),
        );
        r.register(
            "afas_sync_rows_rejected",
            "AFAS rows rejected, by reason",
            m.rejected.clone(),
        );
        r.register(
            "afas_sync_held_plans",
            "Plans held by a guard, waiting for approval",
            m.held_plans.clone(),
        );
        r.register("afas_sync_guard_held", "Runs held by a guard", m.guard_held.clone());
        r.register(
            "afas_sync_unmanaged_held_users",
            "Active target users no employee matches, waiting for approval to be deactivated",
            m.unmanaged_held.clone(),
        );
    }

    /// AFAS's requests and credentials, and the delivery to each sink.
    fn register_afas_and_delivery(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "afas_sync_afas_requests",
            "AFAS requests by connector and HTTP status",
            m.afas_requests.clone(),
        );
        r.register_with_unit(
            "afas_sync_afas_request_duration",
            "AFAS request latency by connector",
            Unit::Seconds,
            m.afas_latency.clone(),
        );
        r.register(
            "afas_sync_outbox_pending",
            "Outbox entries waiting for delivery, per sink",
            m.outbox_pending.clone(),
        );
        r.register(
            "afas_sync_outbox_dead_letters",
            "Dead-lettered outbox entries, per sink",
            m.outbox_dead.clone(),
        );
        r.register(
            "afas_sync_outbox_dead",
            "Dead-lettered outbox entries, per sink and reason class",
            m.outbox_dead_by_reason.clone(),
        );
        r.register(
            "afas_sync_sink_stopped",
            "1 while delivery to a sink is stopped: credentials refused, or the target refuses every change",
            m.sink_stopped.clone(),
        );
        r.register(
            "afas_sync_deliveries",
            "Delivery attempts by sink and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "afas_sync_delivery_concurrency",
            "Deliveries a sink runs at once (adaptive, up to delivery.max_parallelism)",
            m.delivery_concurrency.clone(),
        );
        r.register(
            "afas_sync_delivery_throttled",
            "Target answers that asked for less (HTTP 429, 503) or timed out, per sink",
            m.delivery_throttled.clone(),
        );
        r.register_with_unit(
            "afas_sync_sink_request_duration",
            "Request latency of a delivery target, per sink",
            Unit::Seconds,
            m.sink_latency.clone(),
        );
        r.register_with_unit(
            "afas_sync_afas_token_expiry_timestamp",
            "When the classic App Connector token stops working: what AFAS reports, and at the latest 2027-08-31 (Unix time; 0 when no classic token is used)",
            Unit::Seconds,
            m.token_expiry.clone(),
        );
        r.register_with_unit(
            "afas_sync_afas_oauth_secret_expiry_timestamp",
            "When the AFAS OAuth client secret expires, from afas.oauth_client_secret_expires (Unix time; 0 when unknown or not used)",
            Unit::Seconds,
            m.oauth_secret_expiry.clone(),
        );
    }

    /// Makes a sink's series exist at zero from its first pass, so that
    /// dashboards and alerts see 0 rather than no data.
    pub fn sink_seen(&self, sink: &str) {
        let label = SinkLabels { sink: sink.into() };
        let _ = self.delivery_throttled.get_or_create(&label);
        let _ = self.sink_latency.get_or_create(&label);
        for outcome in ["delivered", "retried", "dead_lettered"] {
            let _ = self.deliveries.get_or_create(&DeliveryLabels {
                sink: sink.into(),
                outcome: outcome.into(),
            });
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    ///
    /// prometheus-client writes OpenMetrics, where a counter family is named
    /// without `_total`; the classic format (what `promtool check metrics`
    /// and every Prometheus version read) names HELP and TYPE with it and
    /// has no `# UNIT` or `# EOF` lines. The conversion is mechanical.
    pub fn encode(&self) -> String {
        let mut open = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut open, &self.registry);
        to_prometheus_text(&open)
    }
}

/// OpenMetrics text → Prometheus text 0.0.4 (see [`Metrics::encode`]).
pub fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static METRICS: OnceLock<Metrics> = OnceLock::new();

pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Every class [`reason_class`] returns.
pub const REASON_CLASSES: &[&str] = &[
    "duplicate_key",
    "missing_field",
    "invalid_email",
    "contract",
    "pay",
    "invalid_date",
    "not_a_row",
    "invalid_value",
];

/// A short, fixed class for a rejection reason (never the row's data).
pub fn reason_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("duplicate key") {
        "duplicate_key"
    } else if r.contains("required but empty") || r.contains("missing") {
        "missing_field"
    } else if r.contains("mail") {
        "invalid_email"
    } else if r.contains("contract row") {
        "contract"
    } else if r.contains("salary row") || r.contains("wage_components row") || r.contains("leave row") {
        "pay"
    } else if r.contains("date") || r.contains("ends (") {
        "invalid_date"
    } else if r.contains("not an object") {
        "not_a_row"
    } else {
        "invalid_value"
    }
}

pub fn unix_now_f64() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// `afas_sync_outbox_dead{sink,reason}` from every class's count, so a
/// count that went back to 0 says so.
pub fn set_dead_by_reason(sink: &str, counts: impl Iterator<Item = (&'static str, u64)>) {
    for (reason, n) in counts {
        metrics()
            .outbox_dead_by_reason
            .get_or_create(&SinkReasonLabels {
                sink: sink.into(),
                reason: reason.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_become_prometheus_counters() {
        let open = "# HELP x_runs Runs.\n# TYPE x_runs counter\nx_runs_total{a=\"b\"} 1\n# HELP x_t T.\n# TYPE x_t gauge\n# UNIT x_t seconds\nx_t 2\n# EOF\n";
        let text = to_prometheus_text(open);
        assert_eq!(text, "# HELP x_runs_total Runs.\n# TYPE x_runs_total counter\nx_runs_total{a=\"b\"} 1\n# HELP x_t T.\n# TYPE x_t gauge\nx_t 2\n");
    }

    #[test]
    fn every_reason_class_is_exposed_from_the_start() {
        let text = metrics().encode();
        for reason in [
            "duplicate key 12",
            "mail is required but empty",
            "not an e-mail address: mail",
            "contract row 3",
            "salary row 2",
            "date 2026-13-01",
            "not an object",
            "something else",
        ] {
            let class = reason_class(reason);
            assert!(REASON_CLASSES.contains(&class), "{class}");
            assert!(
                text.contains(&format!("afas_sync_rows_rejected_total{{reason=\"{class}\"}} 0")),
                "{class} at zero in\n{text}"
            );
        }
    }
}
