//! Peers that answer what no peer should: a token that lives longer than
//! any clock, a `Retry-After` of `i64::MAX` seconds, a redirect to another
//! origin. The real binary, real servers on 127.0.0.1; none may crash it,
//! and nothing may travel where the config did not say.

mod common;

use std::sync::{Arc, Mutex};

use afas_sync::store::Store;
use common::peers::*;
use common::sync_env::*;
use http_body_util::{BodyExt, Full};
use serde_json::json;

/// A peer that gives every request the same answer, and records what it got
/// (method, path, body).
struct Fixed {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixed {
    async fn start(status: u16, headers: Vec<(&'static str, String)>, body: String) -> Fixed {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let got = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock()
                                .expect("log")
                                .push((method, path, String::from_utf8_lossy(&got).into_owned()));
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                            for (k, v) in headers {
                                r.headers_mut().insert(k, v.parse().expect("hv"));
                            }
                            Ok::<_, std::io::Error>(r)
                        }
                    });
                    common::relay::serve(stream, svc).await;
                });
            }
        });
        Fixed { port, seen, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<(String, String, String)> {
        self.seen.lock().expect("log").clone()
    }
}

/// The SCIM sink signing in with OAuth client credentials at `token_url`.
fn oauth_sink(scim: &str, token_url: &str) -> String {
    format!(
        "[sink.scim]\nurl = \"{scim}\"\noauth_token_url = \"{token_url}\"\noauth_client_id = \"afas-sync\"\n\
         oauth_client_secret_file = \"scim-secret\"\ntimeout_secs = 10\n"
    )
}

fn write_secret(env: &Env) {
    use std::os::unix::fs::PermissionsExt;
    let p = env.dir.path().join("scim-secret");
    std::fs::write(&p, "the-client-secret-4711").expect("secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("mode");
}

#[tokio::test]
async fn a_token_that_lives_longer_than_any_clock_is_kept_a_day_and_used() {
    let scim = ScimPeer::start().await;
    // scim2-server takes its static token; the token endpoint hands it out
    // with a lifetime of u64::MAX seconds.
    let token = Fixed::start(
        200,
        vec![("content-type", "application/json".into())],
        format!("{{\"access_token\":\"{SCIM_TOKEN}\",\"token_type\":\"Bearer\",\"expires_in\":18446744073709551615}}"),
    )
    .await;
    let env = Env::new(30, &oauth_sink(&scim.url(), &format!("{}/token", token.url()))).await;
    write_secret(&env);
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "no panic, every user delivered: {out}");
    assert!(!out.contains("the-client-secret-4711"), "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
    assert!(!token.seen().is_empty(), "signed in with OAuth");
}

#[tokio::test]
async fn a_retry_after_beyond_any_clock_waits_a_day_at_most() {
    // Every request, discovery included, answered 429 with a wait of
    // i64::MAX seconds.
    let busy = Fixed::start(503, vec![("retry-after", "9223372036854775807".into())], "{}".into()).await;
    let env = Env::new(
        20,
        &scim_sink(&busy.url()).replace("timeout_secs = 10", "timeout_secs = 5"),
    )
    .await;
    let text = std::fs::read_to_string(&env.cfg).expect("cfg");
    std::fs::write(&env.cfg, text.replace("sync_wait_secs = 20", "sync_wait_secs = 2")).expect("cfg");
    let before = jiff::Timestamp::now().as_second();
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "the run commits, delivery waits: {out}");
    let store = Store::open(&env.store_path).expect("store");
    let entries = store.outbox_entries("scim").expect("entries");
    assert!(!entries.is_empty());
    for (_, e) in &entries {
        assert!(!e.dead, "{e:?}");
        assert!(
            e.next_at > before && e.next_at <= jiff::Timestamp::now().as_second() + 24 * 3600,
            "waits at most a day, and does wait: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_secret_stays_home() {
    let elsewhere = Fixed::start(
        200,
        vec![("content-type", "application/json".into())],
        json!({"access_token": SCIM_TOKEN, "token_type": "Bearer", "expires_in": 3600}).to_string(),
    )
    .await;
    let redirect = Fixed::start(
        307,
        vec![("location", format!("{}/stolen", elsewhere.url()))],
        String::new(),
    )
    .await;
    let scim = ScimPeer::start().await;
    let env = Env::new(20, &oauth_sink(&scim.url(), &format!("{}/token", redirect.url()))).await;
    write_secret(&env);
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "nothing delivered: {out}");
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect's target got nothing: {:?}",
        elsewhere.seen()
    );
    assert_eq!(
        redirect.seen().len(),
        redirect.seen().iter().filter(|(m, _, _)| m == "POST").count()
    );
    assert!(!out.contains("the-client-secret-4711"), "{out}");
    let store = Store::open(&env.store_path).expect("store");
    let errors: Vec<String> = store
        .outbox_entries("scim")
        .expect("entries")
        .into_iter()
        .filter_map(|(_, e)| e.last_error)
        .collect();
    assert!(
        out.contains("redirected to") || errors.iter().any(|e| e.contains("redirected to")),
        "the refusal names where it pointed: {out} {errors:?}"
    );
}
