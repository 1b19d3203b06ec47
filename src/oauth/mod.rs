//! OAuth 2 client credentials, shared by the AFAS client and the SCIM sink:
//! fetch a token, cache it until shortly before `expires_in`, and let the
//! caller force a refresh once after a 401. The client authenticates with
//! its secret in the form (`client_secret_post`), in HTTP Basic
//! (`client_secret_basic`), or with a signed JWT (`private_key_jwt`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::model::Secret;

/// The longest a token is kept, whatever its `expires_in` says.
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

pub mod jwt;

/// How the client proves who it is at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    SecretPost(Secret),
    SecretBasic(Secret),
    PrivateKeyJwt(Arc<jwt::SigningKey>),
}

impl ClientAuth {
    /// The method's registered name (RFC 8414), with the JWT algorithm.
    pub fn describe(&self) -> String {
        match self {
            ClientAuth::SecretPost(_) => "client_secret_post".into(),
            ClientAuth::SecretBasic(_) => "client_secret_basic".into(),
            ClientAuth::PrivateKeyJwt(k) => format!("private_key_jwt ({})", k.alg().name()),
        }
    }
}

/// An OAuth client: its id and how it authenticates.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub auth: ClientAuth,
}

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
    client: Client,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(token_url: url::Url, client: Client) -> Self {
        TokenSource {
            token_url,
            client,
            cached: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
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
        let failure = |error: String, description: Option<String>, transient: bool| OAuthFailure {
            error,
            description,
            transient,
        };
        let mut form: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
        let mut request = http.post(self.token_url.clone());
        match &self.client.auth {
            ClientAuth::SecretPost(secret) => {
                form.push(("client_id", self.client.id.clone()));
                form.push(("client_secret", secret.expose().to_string()));
            }
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(&self.client.id), enc(secret.expose()));
                let mut value = reqwest::header::HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| failure("the client id cannot be sent in a header".into(), None, false))?;
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let now = jiff::Timestamp::now().as_second();
                let assertion = key
                    .assertion(&self.client.id, self.token_url.as_str(), now)
                    .map_err(|e| failure(e.to_string(), None, false))?;
                form.push(("client_id", self.client.id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let resp = request.form(&form).send().await.map_err(|e| {
            let e = e.without_url();
            failure(
                format!("cannot reach {}", self.token_url),
                Some(crate::net::error_chain(&e)),
                true,
            )
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| failure("unreadable token answer".into(), Some(e.to_string()), true))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Refusal>(&body) {
                // A 503 is the token endpoint's replay store being down
                // (AFAS documents it as transient), not a bad secret.
                Ok(r) if !r.error.is_empty() && !status.is_server_error() => {
                    failure(r.error, r.error_description, false)
                }
                _ => failure(format!("HTTP {}", status.as_u16()), None, status.is_server_error()),
            });
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| failure("unreadable token answer".into(), Some(e.to_string()), false))?;
        // Capped at a day: a lifetime from the peer beyond any clock (up to
        // u64::MAX seconds) would overflow the instant it is added to.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).min(MAX_LIFETIME_SECS));
        // Renew a minute early (or halfway for very short tokens) so a token
        // never expires between check and use.
        let margin = Duration::from_secs(60).min(lifetime / 2);
        Ok((
            format!("Bearer {}", answer.access_token),
            Instant::now()
                .checked_add(lifetime - margin)
                .unwrap_or_else(Instant::now),
        ))
    }
}
