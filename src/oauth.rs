//! OAuth 2 client credentials, shared by the AFAS client and the SCIM sink:
//! fetch a token, cache it until shortly before `expires_in`, and let the
//! caller force a refresh once after a 401.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::Secret;

/// A refused or unreadable token request; never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthFailure {
    pub error: String,
    pub description: Option<String>,
    /// True when the token endpoint could not be reached (worth a retry).
    pub transient: bool,
}

pub struct TokenSource {
    token_url: url::Url,
    client_id: String,
    secret: Secret,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(token_url: url::Url, client_id: String, secret: Secret) -> Self {
        TokenSource {
            token_url,
            client_id,
            secret,
            cached: Mutex::new(None),
        }
    }

    /// The `Authorization` value, `Bearer …`; `force` skips the cache.
    pub async fn bearer(&self, http: &reqwest::Client, force: bool) -> Result<String, OAuthFailure> {
        let mut guard = self.cached.lock().await;
        if !force {
            if let Some((token, valid_until)) = guard.as_ref() {
                if Instant::now() < *valid_until {
                    return Ok(token.clone());
                }
            }
        }
        let (token, valid_until) = self.fetch(http).await?;
        *guard = Some((token.clone(), valid_until));
        Ok(token)
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<(String, Instant), OAuthFailure> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Refusal {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: Option<String>,
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose()),
        ];
        let failure = |error: String, description: Option<String>, transient: bool| OAuthFailure {
            error,
            description,
            transient,
        };
        let resp = http
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| failure(format!("cannot reach {}", self.token_url), Some(e.to_string()), true))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| failure("unreadable token answer".into(), Some(e.to_string()), true))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Refusal>(&body) {
                Ok(r) if !r.error.is_empty() => failure(r.error, r.error_description, false),
                _ => failure(format!("HTTP {}", status.as_u16()), None, status.is_server_error()),
            });
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| failure("unreadable token answer".into(), Some(e.to_string()), false))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        // Renew a minute early (or halfway for very short tokens) so a token
        // never expires between check and use.
        let margin = Duration::from_secs(60).min(lifetime / 2);
        Ok((
            format!("Bearer {}", answer.access_token),
            Instant::now() + lifetime - margin,
        ))
    }
}
