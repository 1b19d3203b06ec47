//! When the AFAS credentials stop working, said in time: the classic App
//! Connector token is retired (existing tokens carry 2027-05-01 since
//! September 2026; none works after 2027-08-31), and from Profit 9 OAuth
//! client secrets expire (180 days by default).

use jiff::civil::Date;

use crate::config::{AfasAuth, AfasConfig};

/// The last day AFAS accepts any classic token is the day before this.
pub const CLASSIC_TOKEN_END: Date = jiff::civil::date(2027, 8, 31);

/// The README section a customer reads to move.
pub const MIGRATION_SECTION: &str = "README, \"Moving from the App Connector token to OAuth\"";

/// Warn this many days before a classic token stops (the alert's window).
pub const TOKEN_WARN_DAYS: i64 = 30;

/// Warn this many days before a client secret expires.
pub const SECRET_WARN_DAYS: i64 = 14;

/// What expires, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A classic token: the date it stops working.
    ClassicToken(Date),
    /// An OAuth client secret, when the config says when it expires.
    ClientSecret(Option<Date>),
    /// private_key_jwt: nothing that AFAS expires.
    None,
}

/// A date AFAS reports in `/metainfo` (`tokenExpiry`), in either of the
/// forms it uses for dates.
fn reported_date(text: &str) -> Option<Date> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Some(ts.to_zoned(jiff::tz::TimeZone::UTC).date());
    }
    super::rows::parse_afas_date(text)
}

impl Expiry {
    /// What the config says, with the classic token's date from
    /// `/metainfo` when AFAS reported one (never later than the end).
    pub fn of(config: &AfasConfig, reported: Option<&str>) -> Expiry {
        match &config.auth {
            AfasAuth::Token(_) => {
                let end = reported
                    .and_then(reported_date)
                    .map_or(CLASSIC_TOKEN_END, |d| d.min(CLASSIC_TOKEN_END));
                Expiry::ClassicToken(end)
            }
            AfasAuth::OAuth { client, secret_expires } => match client.auth {
                crate::oauth::ClientAuth::PrivateKeyJwt(_) => Expiry::None,
                _ => Expiry::ClientSecret(*secret_expires),
            },
        }
    }

    /// Sets `afas_sync_afas_token_expiry_timestamp_seconds` and
    /// `afas_sync_afas_oauth_secret_expiry_timestamp_seconds` (0 for what
    /// is not in use or not known).
    pub fn publish(self) {
        let seconds = |d: Date| {
            d.to_zoned(jiff::tz::TimeZone::UTC)
                .map(|z| z.timestamp().as_second() as f64)
                .unwrap_or(0.0)
        };
        let (token, secret) = match self {
            Expiry::ClassicToken(d) => (seconds(d), 0.0),
            Expiry::ClientSecret(d) => (0.0, d.map_or(0.0, seconds)),
            Expiry::None => (0.0, 0.0),
        };
        let m = crate::metrics::metrics();
        m.token_expiry.set(token);
        m.oauth_secret_expiry.set(secret);
    }

    /// A warning for `check` and the log, or `None` while there is time.
    /// A classic token always warns: it has an end date.
    pub fn warning(self, today: Date) -> Option<String> {
        // A date minus a date is a span in days.
        let days = |d: Date| i64::from((d - today).get_days());
        match self {
            Expiry::ClassicToken(end) => {
                let left = days(end);
                let when = if left <= 0 {
                    format!("stopped working on {end}")
                } else {
                    format!("stops working on {end} ({left} days from now)")
                };
                Some(format!(
                    "the AFAS App Connector token {when}: AFAS is retiring classic tokens (none works after {CLASSIC_TOKEN_END}). Move to OAuth before then: {MIGRATION_SECTION}"
                ))
            }
            Expiry::ClientSecret(Some(end)) => {
                let left = days(end);
                (left <= SECRET_WARN_DAYS).then(|| {
                    format!(
                        "the AFAS OAuth client secret {} {end}: make a new secret for the OAuth client in AFAS, write it to afas.oauth_client_secret_file, update afas.oauth_client_secret_expires and reload",
                        if left <= 0 { "expired on" } else { "expires on" }
                    )
                })
            }
            Expiry::ClientSecret(None) | Expiry::None => None,
        }
    }
}

/// The last `tokenExpiry` AFAS reported, so that publishing again after a
/// reload (before the next run reads `/metainfo`) keeps AFAS's date.
static REPORTED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Publishes the expiry metrics for `config`; `reported` is what
/// `/metainfo` said just now, if it was read. Returns the expiry.
pub fn publish_for(config: &AfasConfig, reported: Option<&str>) -> Expiry {
    let mut last = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = reported {
        *last = Some(r.to_string());
    }
    let expiry = Expiry::of(config, last.as_deref());
    expiry.publish();
    expiry
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn the_classic_token_warns_with_the_earlier_of_what_afas_says_and_the_end() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("t"), "x").expect("token");
        let token = crate::config::Config::from_toml(
            "[afas]\nbase_url = \"https://a.example/ProfitRestServices\"\ntoken_file = \"t\"\n",
            &dir.path().join("config.toml"),
        )
        .expect("config")
        .config
        .afas;
        assert_eq!(
            Expiry::of(&token, Some("2027-05-01T00:00:00Z")),
            Expiry::ClassicToken(date(2027, 5, 1))
        );
        assert_eq!(
            Expiry::of(&token, Some("2027-05-01")),
            Expiry::ClassicToken(date(2027, 5, 1))
        );
        assert_eq!(
            Expiry::of(&token, Some("2030-01-01T00:00:00Z")),
            Expiry::ClassicToken(CLASSIC_TOKEN_END)
        );
        assert_eq!(Expiry::of(&token, None), Expiry::ClassicToken(CLASSIC_TOKEN_END));
        assert_eq!(
            Expiry::of(&token, Some("garbage")),
            Expiry::ClassicToken(CLASSIC_TOKEN_END)
        );
        let w = Expiry::ClassicToken(date(2027, 5, 1))
            .warning(date(2026, 11, 30))
            .expect("warns");
        assert!(
            w.contains("2027-05-01 (152 days from now)") && w.contains(MIGRATION_SECTION),
            "{w}"
        );
        let w = Expiry::ClassicToken(date(2027, 5, 1))
            .warning(date(2027, 6, 1))
            .expect("warns");
        assert!(w.contains("stopped working on 2027-05-01"), "{w}");

        let secret = Expiry::ClientSecret(Some(date(2027, 1, 10)));
        assert_eq!(secret.warning(date(2026, 12, 26)), None, "15 days left");
        assert!(secret
            .warning(date(2026, 12, 27))
            .expect("14 days")
            .contains("expires on 2027-01-10"));
        assert!(secret.warning(date(2027, 2, 1)).expect("after").contains("expired on"));
        assert_eq!(Expiry::ClientSecret(None).warning(date(2026, 1, 1)), None);
    }
}
