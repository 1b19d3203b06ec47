//! How the emulator lets callers in, as an AFAS App connector does: the
//! classic token, OAuth client credentials (`client_secret_post`,
//! `client_secret_basic`, `private_key_jwt`), or both side by side while a
//! connector is switched to "Hybrid" for a migration.

use super::*;
use crate::oauth::jwt::VerifyingKey;

/// What an App connector accepts (Profit 9: classic, Hybrid or OAuth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorMode {
    Token,
    Hybrid,
    OAuth,
}

impl ConnectorMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "token" => Some(ConnectorMode::Token),
            "hybrid" => Some(ConnectorMode::Hybrid),
            "oauth" => Some(ConnectorMode::OAuth),
            _ => None,
        }
    }
}

/// How the emulator authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthSetup {
    /// The App Connector token it accepts.
    pub token: Option<AppToken>,
    /// What `/metainfo` reports as the classic token's expiry (AFAS has
    /// given existing tokens 2027-05-01 since September 2026).
    pub token_expiry: Option<String>,
    /// OAuth client id and secret it accepts (post or basic).
    pub oauth: Option<(String, String)>,
    /// When the client secret stops working.
    pub oauth_secret_expires: Option<jiff::Timestamp>,
    /// OAuth client id and the public key its assertions must verify with.
    pub oauth_key: Option<(String, VerifyingKey)>,
    pub oauth_lifetime: Duration,
    /// Where the connector starts; tests and `POST /_emulator/connector/M`
    /// switch it.
    pub mode: ConnectorMode,
}

impl AuthSetup {
    /// A classic-token connector whose OAuth clients, if any are added,
    /// are accepted beside the token (Hybrid).
    pub fn token(token: AppToken) -> Self {
        AuthSetup {
            token: Some(token),
            token_expiry: Some("2027-05-01T00:00:00Z".into()),
            oauth: None,
            oauth_secret_expires: None,
            oauth_key: None,
            oauth_lifetime: Duration::from_secs(3600),
            mode: ConnectorMode::Hybrid,
        }
    }
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn oauth_error(status: u16, error: &str, description: &str) -> Response<BoxBody> {
    respond(
        status,
        json!({"error": error, "error_description": description}).to_string(),
    )
}

impl EmulatorState {
    pub fn set_connector_mode(&self, mode: ConnectorMode) {
        *lock(&self.mode) = mode;
    }

    pub fn connector_mode(&self) -> ConnectorMode {
        *lock(&self.mode)
    }

    fn accepts_token(&self) -> bool {
        self.connector_mode() != ConnectorMode::OAuth
    }

    fn accepts_oauth(&self) -> bool {
        self.connector_mode() != ConnectorMode::Token
    }

    pub(super) fn reported_token_expiry(&self) -> Value {
        match (&self.auth.token, &self.auth.token_expiry) {
            (Some(_), Some(e)) if self.accepts_token() => Value::String(e.clone()),
            _ => Value::Null,
        }
    }

    pub(super) fn check_auth(&self, req: &Request<Incoming>) -> Option<Response<BoxBody>> {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(rest) = header.strip_prefix("AfasToken ") {
            if let (Some(token), true) = (&self.auth.token, self.accepts_token()) {
                let expected = base64::engine::general_purpose::STANDARD.encode(token.to_xml());
                if rest == expected {
                    return None;
                }
                // AFAS answers an un-encoded token with a 500, not a 401.
                if rest.trim_start().starts_with('<') {
                    return Some(functional("Invalid token: the token must be base64 encoded"));
                }
            }
            return Some(respond(401, ""));
        }
        if let Some(rest) = header.strip_prefix("Bearer ") {
            let ok = self.accepts_oauth() && lock(&self.bearer).get(rest).is_some_and(|exp| Instant::now() < *exp);
            if ok {
                return None;
            }
            let mut r = respond(401, "");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return Some(r);
        }
        Some(respond(401, ""))
    }

    pub(super) async fn oauth_token(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let audience = format!(
            "http://{}{}",
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
            req.uri().path()
        );
        let basic = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (form_decode(a), form_decode(b))));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return oauth_error(400, "invalid_request", "unreadable body"),
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(400, "unsupported_grant_type", "only client_credentials");
        }
        if !self.accepts_oauth() {
            return oauth_error(400, "unauthorized_client", "This app connector does not use OAuth");
        }
        let verdict = match (form.get("client_assertion_type"), form.get("client_assertion")) {
            (Some(t), Some(a)) if t == JWT_BEARER => self.check_assertion(a, form.get("client_id"), &audience),
            (Some(_), _) => Err("unsupported client_assertion_type"),
            _ => self.check_secret(&form, basic),
        };
        if let Err(why) = verdict {
            return oauth_error(401, "invalid_client", why);
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let token = format!("emu-{:016x}", data::Rng::new(n ^ 0x5eed).next_u64());
        lock(&self.bearer).insert(token.clone(), Instant::now() + self.auth.oauth_lifetime);
        respond(
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": self.auth.oauth_lifetime.as_secs()})
                .to_string(),
        )
    }

    fn check_secret(
        &self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<(), &'static str> {
        let (id, secret) = match (form.get("client_id"), form.get("client_secret"), basic) {
            (Some(i), Some(s), _) => (i.clone(), s.clone()),
            (_, _, Some(pair)) => pair,
            _ => return Err("Client authentication failed"),
        };
        match &self.auth.oauth {
            Some((want_id, want_secret)) if *want_id == id && *want_secret == secret => {
                match self.auth.oauth_secret_expires {
                    Some(end) if jiff::Timestamp::now() >= end => Err("The client secret has expired"),
                    _ => Ok(()),
                }
            }
            _ => Err("Client authentication failed"),
        }
    }

    fn check_assertion(&self, assertion: &str, client_id: Option<&String>, audience: &str) -> Result<(), &'static str> {
        let Some((want_id, key)) = &self.auth.oauth_key else {
            return Err("Client authentication failed");
        };
        let claims = key
            .verify(assertion)
            .map_err(|_| "The client assertion's signature is not valid")?;
        if claims.iss != *want_id || claims.sub != *want_id || client_id.is_some_and(|c| c != want_id) {
            return Err("Client authentication failed");
        }
        if claims.aud != audience {
            return Err("The client assertion is for another audience");
        }
        let now = jiff::Timestamp::now().as_second();
        if claims.exp <= now || claims.exp - now > 600 {
            return Err("The client assertion has expired or lives too long");
        }
        if !lock(&self.seen_jti).insert(claims.jti) {
            return Err("The client assertion was used before");
        }
        Ok(())
    }
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
