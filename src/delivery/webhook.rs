//! Signed webhooks per Standard Webhooks v1.0.0: `webhook-id` (stable per
//! event, so receivers can drop repeats), `webhook-timestamp`, and
//! `webhook-signature` with one `v1,<base64 HMAC-SHA256>` per secret, so a
//! receiver can rotate secrets without missing an event.

use base64::Engine as _;
use serde_json::json;

use super::{classify, mutation_event, mutation_event_id, run_event, run_event_id, transport_error, Job, SinkError};
use crate::config::WebhookConfig;
use crate::store::OutboxItem;

pub struct WebhookSink {
    http: reqwest::Client,
    url: url::Url,
    keys: Vec<Vec<u8>>,
    installation: u64,
}

/// `v1,<sig>` entries, space-separated, over `{id}.{timestamp}.{body}`.
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    let message = format!("{id}.{timestamp}.{body}");
    keys.iter()
        .map(|k| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
            let tag = ring::hmac::sign(&key, message.as_bytes());
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key bytes of a `whsec_<base64>` secret (validated by the config).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl WebhookSink {
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn new(c: &WebhookConfig, installation: u64) -> Result<Self, String> {
        let http = crate::net::client(&crate::net::ClientSpec {
            timeout: Some(c.timeout),
            ..Default::default()
        })?;
        let keys = c.secrets.iter().filter_map(|s| secret_key(s.expose())).collect();
        Ok(WebhookSink {
            http,
            url: c.url.clone(),
            keys,
            installation,
        })
    }

    pub async fn deliver(&self, job: &Job) -> Result<(), SinkError> {
        let (id, event) = match (&job.entry.item, &job.mutation, &job.run) {
            (OutboxItem::Mutation { run, index, .. }, Some(m), _) => {
                let i = self.installation;
                (mutation_event_id(i, *run, *index), mutation_event(m, i, *run, *index))
            }
            (OutboxItem::Run { .. }, _, Some(r)) => {
                (run_event_id(self.installation, r), run_event(r, self.installation))
            }
            // Erased by `forget` or retention since: nothing left to send.
            _ => return Ok(()),
        };
        let now = jiff::Timestamp::now();
        let body = json!({
            "type": event["type"],
            "timestamp": now.to_string(),
            "data": event,
        })
        .to_string();
        let signature = sign(&self.keys, &id, now.as_second(), &body);
        let resp = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.as_second().to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                super::trail::note(WEBHOOK_OP.into(), None, None, None);
                transport_error(&e, "the webhook receiver")
            })?;
        let status = resp.status().as_u16();
        super::trail::note(WEBHOOK_OP.into(), Some(status), None, None);
        if (200..300).contains(&status) {
            return Ok(());
        }
        if status == 410 {
            return Err(SinkError::Down {
                reason: "the webhook receiver answered 410 Gone: it asks not to be called again; fix or remove [sink.webhook]".into(),
            });
        }
        let after = crate::net::retry_after(resp.headers());
        Err(classify(status, after, "the webhook receiver", ""))
    }
}

/// How a webhook request is logged: never its URL, whose path often
/// carries the receiver's token.
const WEBHOOK_OP: &str = "POST (the webhook URL)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_spec_example_shape() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = sign(
            &[key.clone(), key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        // The example from the Standard Webhooks specification.
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
