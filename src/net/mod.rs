//! The transport every outside peer is reached by: one HTTP client builder
//! (rustls with ring, a user agent, timeouts, an optional private CA), one
//! `Retry-After` reader, one error-chain formatter, and one backoff policy
//! with random jitter. The AFAS client, the SCIM and webhook sinks and the
//! OAuth token source all use these.

use std::path::Path;
use std::time::Duration;

/// Installs rustls' ring provider once per process (reqwest is built
/// without one, so no aws-lc-rs and no cmake).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a client talks to one peer.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec<'a> {
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    /// Keep idle connections this long (AFAS asks clients to).
    pub pool_idle: Option<Duration>,
    /// Refuse to follow anything but https.
    pub https_only: bool,
    /// An extra CA certificate (PEM), with the config key it came from.
    pub ca_file: Option<(&'a str, &'a Path)>,
}

/// The one HTTP client builder. Certificate verification is always on.
pub fn client(spec: &ClientSpec<'_>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    // No redirect is followed: a 307/308 would re-send the body (a client
    // secret, personal data, a signed event) to wherever the peer points,
    // and https could turn into http. The error names where it pointed.
    let refuse = reqwest::redirect::Policy::custom(|attempt| {
        let to = attempt.url().clone();
        attempt.error(format!(
            "the peer redirected to {}; afas-sync follows no redirects: if that address is right, configure it instead",
            without_secrets(&to)
        ))
    });
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("afas-sync/", env!("CARGO_PKG_VERSION")))
        .redirect(refuse)
        .https_only(spec.https_only);
    if let Some(t) = spec.timeout {
        b = b.timeout(t);
    }
    if let Some(t) = spec.connect_timeout {
        b = b.connect_timeout(t);
    }
    if let Some(t) = spec.pool_idle {
        b = b.pool_idle_timeout(t);
    }
    if let Some((key, path)) = spec.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| error_chain(&e))
}

/// A `Retry-After` header in seconds (the form AFAS, SCIM targets and
/// webhook receivers send); an HTTP date or anything else is ignored.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER.as_secs())))
}

/// The longest wait a peer may ask for: a day. A larger number (up to
/// `u64::MAX` seconds) would overflow the clocks it is added to.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A URL as it may be shown: without user, password, query or fragment.
fn without_secrets(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Sends a request that carries a bearer token; when the peer answers 401
/// and the token is an OAuth one (it may have been revoked or expired
/// early), sends it once more with a fresh token. `send(force)` builds and
/// sends the request, fetching a new token when `force` is set.
pub async fn send_refreshing<F, Fut, E>(oauth: bool, mut send: F) -> Result<reqwest::Response, E>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::Response, E>>,
{
    let resp = send(false).await?;
    if oauth && resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return send(true).await;
    }
    Ok(resp)
}

/// An error with every cause after it: "error: cause: deeper cause".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // reqwest repeats its inner error's text; say it once.
        if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

/// Exponential backoff with full jitter: after `attempts` failures, a wait
/// between half and all of `base` doubled that often, capped at `cap`.
/// The jitter is random, so many clients that failed together do not come
/// back together.
pub fn backoff(attempts: u32, base: Duration, cap: Duration) -> Duration {
    let full = base.saturating_mul(1u32 << attempts.min(16)).min(cap);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_beyond_any_clock_is_a_day() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "9223372036854775807".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(reqwest::header::RETRY_AFTER, "120".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_random_jitter() {
        let s = Duration::from_secs;
        for _ in 0..100 {
            let a = backoff(0, s(30), s(3600));
            assert!(a >= s(15) && a <= s(30), "{a:?}");
            let b = backoff(1, s(30), s(3600));
            assert!(b >= s(30) && b <= s(60), "{b:?}");
            let c = backoff(20, s(30), s(3600));
            assert!(c >= s(1800) && c <= s(3600), "{c:?}");
        }
        let spread: std::collections::BTreeSet<u128> =
            (0..50).map(|_| backoff(5, s(30), s(3600)).as_millis()).collect();
        assert!(spread.len() > 40, "random, not one value: {spread:?}");
    }

    #[test]
    fn retry_after_reads_seconds_and_ignores_the_rest() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", " 7 ".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT".parse().expect("hv"));
        assert_eq!(retry_after(&h), None);
    }
}
