//! Everything that can go wrong talking to AFAS, each with what the operator
//! should do next. Messages never contain the token or OAuth secret.

use std::time::Duration;

use super::token::TokenError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AfasError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("AFAS rejected the credentials (HTTP 401) on {path}. The App Connector token is wrong, was regenerated or expired, or the App connector was switched to OAuth: copy a fresh token from General > Management > App connector (setup steps 6-7) into the token file, or move to OAuth (README, \"Moving from the App Connector token to OAuth\")")]
    Unauthorized { path: String },
    #[error("AFAS refused access (HTTP 403) on {path}: the App Connector's IP restriction does not allow this machine's address. Add it in the App Connector settings, or remove the restriction")]
    Forbidden { path: String },
    #[error("AFAS answered 404 for {path}: the GetConnector `{connector}` does not exist in this environment, the Profit ID / base_url is wrong, or the query string was too long. Check afas.profit_id, afas.environment and the connector name")]
    NotFound { path: String, connector: String },
    #[error("AFAS error on {path}: \"{message}\"{log}. {hint}", log = log_ref.as_ref().map(|r| format!(" (Profit log reference {r})")).unwrap_or_default())]
    Functional {
        path: String,
        message: String,
        log_ref: Option<String>,
        hint: &'static str,
        temporary: bool,
    },
    #[error("AFAS is in maintenance (HTTP 503){}. The next run will try again", retry_after.map(|d| format!("; it asks to retry after {} s", d.as_secs())).unwrap_or_default())]
    Maintenance { retry_after: Option<Duration> },
    #[error("AFAS answered HTTP {status} on {path}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, path: String, body: String },
    #[error("cannot reach AFAS at {host}: {reason}. Check the network, DNS, proxy and afas.base_url")]
    Connect { host: String, reason: String },
    #[error("AFAS did not answer {path} within the timeout ({reason}); raise afas.request_timeout_secs or lower afas.page_size")]
    Timeout { path: String, reason: String },
    #[error("AFAS sent an unreadable answer on {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("paging through `{connector}` stopped: {reason}")]
    Paging { connector: String, reason: String },
    #[error("AFAS's OAuth token endpoint refused afas-sync: {error}{}. {hint}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        error: String,
        description: Option<String>,
        /// The token endpoint could not answer (unreachable, 5xx).
        transient: bool,
        hint: &'static str,
    },
    #[error("the AFAS emulator / client setup failed: {0}")]
    Setup(String),
}

impl AfasError {
    /// A refused or failed token request, with what to do about it for
    /// the client authentication method in use.
    pub fn oauth(f: crate::oauth::OAuthFailure, auth: &crate::oauth::ClientAuth) -> Self {
        use crate::oauth::ClientAuth;
        let hint = match (f.error.as_str(), auth) {
            _ if f.transient => "The token endpoint is unavailable for now; afas-sync retries with backoff",
            ("invalid_client", ClientAuth::PrivateKeyJwt(_)) => {
                "AFAS did not accept the signed client assertion: the private key in afas.oauth_private_key_file does not match the public key registered for this OAuth client in AFAS, or afas.oauth_client_id is wrong. Register the key's public half (`openssl pkey -in KEY -pubout`) with the App connector's OAuth client in AFAS, or point afas.oauth_private_key_file at the matching key, then reload"
            }
            ("invalid_client", _) => {
                "The client secret is wrong or has expired (AFAS client secrets expire, after 180 days by default), or afas.oauth_client_id is wrong. In AFAS, make a new secret for the App connector's OAuth client, write it to afas.oauth_client_secret_file, set afas.oauth_client_secret_expires to the expiry date AFAS shows, and reload (systemctl reload afas-sync)"
            }
            ("unauthorized_client", _) => {
                "This OAuth client may not use the client credentials grant, or the App connector is not switched to Hybrid or OAuth in AFAS yet (README, \"Moving from the App Connector token to OAuth\")"
            }
            _ => "Check afas.oauth_client_id, afas.oauth_client_auth and the client secret or key file",
        };
        AfasError::OAuth {
            error: f.error,
            description: f.description,
            transient: f.transient,
            hint,
        }
    }

    /// Whether retrying the same request may help. Credentials, permissions,
    /// wrong names and broken paging never get better by asking again.
    pub fn is_transient(&self) -> bool {
        match self {
            AfasError::Maintenance { .. }
            | AfasError::Connect { .. }
            | AfasError::Timeout { .. }
            | AfasError::Decode { .. } => true,
            AfasError::Functional { temporary, .. } => *temporary,
            AfasError::OAuth { transient, .. } => *transient,
            AfasError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// A server-imposed wait (503 `retry_after`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AfasError::Maintenance { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short stable label for metrics and `check` output.
    pub fn kind(&self) -> &'static str {
        match self {
            AfasError::Token(_) => "token_invalid",
            AfasError::Unauthorized { .. } => "unauthorized",
            AfasError::Forbidden { .. } => "forbidden",
            AfasError::NotFound { .. } => "not_found",
            AfasError::Functional { .. } => "functional",
            AfasError::Maintenance { .. } => "maintenance",
            AfasError::Status { .. } => "http_status",
            AfasError::Connect { .. } => "connect",
            AfasError::Timeout { .. } => "timeout",
            AfasError::Decode { .. } => "decode",
            AfasError::Paging { .. } => "paging",
            AfasError::OAuth { .. } => "oauth",
            AfasError::Setup(_) => "setup",
        }
    }
}

/// Hints for AFAS's known functional (HTTP 500) messages, and whether the
/// condition is temporary.
pub fn classify_500(message: &str) -> (&'static str, bool) {
    let m = message.to_ascii_lowercase();
    if m.contains("connector field") && m.contains("not found") {
        ("The GetConnector lacks a field the mapping uses: add the field to the GetConnector in AFAS, or change the [mapping] key", false)
    } else if m.contains("not supported for this app") || m.contains("not authorized") {
        ("Add the GetConnector to the App Connector (setup step 6) and check the user group's authorization (setup steps 1-3)", false)
    } else if m.contains("blocked") {
        ("The GetConnector definition is blocked in AFAS: unblock it under General > Output > Management > GetConnector", false)
    } else if m.contains("maximum duration") || m.contains("timeout") {
        (
            "AFAS gave up after its 900 s limit; retried with backoff. If it persists, lower afas.page_size",
            true,
        )
    } else if m.contains("out of memory") || m.contains("out of string space") {
        (
            "The page is too large for AFAS (columns × rows > ~150,000): lower afas.page_size",
            true,
        )
    } else {
        (
            "Look the log reference up in AFAS (General > Management > Logs) or ask AFAS support",
            false,
        )
    }
}
