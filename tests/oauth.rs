//! OAuth against the emulator's App connector over real HTTP: the three
//! client authentication methods, refused and expired credentials, a
//! revoked access token, a token endpoint that is briefly down, and the
//! move from the classic token to OAuth with the daemon running.

mod common;

use std::sync::Arc;
use std::time::Duration;

use afas_sync::afas::client::Credentials;
use afas_sync::afas::{AfasClient, AfasError};
use afas_sync::config::Secret;
use afas_sync::emulator::data::generate;
use afas_sync::emulator::{AuthSetup, ConnectorMode, Emulator, EmulatorState, FaultAction, FaultRule};
use afas_sync::oauth::jwt::{Alg, SigningKey, VerifyingKey};
use afas_sync::oauth::{Client, ClientAuth};
use common::peers::{free_port, http};
use common::*;
use serde_json::Value;

const SECRET: &str = "s3cret:+%/value";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture key")
}

fn signing(name: &str, alg: Option<Alg>) -> ClientAuth {
    ClientAuth::PrivateKeyJwt(Arc::new(SigningKey::from_pem(&key_file(name), alg).expect("key")))
}

/// An App connector with a secret client `alleo` and a key client `alleo-jwt`.
async fn emulator(public_key: &str) -> Emulator {
    let mut auth = AuthSetup::token(token());
    auth.oauth = Some(("alleo".into(), SECRET.into()));
    auth.oauth_key = Some((
        "alleo-jwt".into(),
        VerifyingKey::from_pem(&key_file(public_key)).expect("public key"),
    ));
    spawn_emulator_with(EmulatorState::new(vec![("d".into(), items(5))], auth)).await
}

fn oauth_client(emu: &Emulator, id: &str, auth: ClientAuth) -> AfasClient {
    let mut opts = options(&emu.base_url());
    opts.credentials = Credentials::OAuth(Client { id: id.into(), auth });
    AfasClient::new(opts).expect("client")
}

/// The token requests the emulator saw: (Authorization scheme, status).
fn token_requests(emu: &Emulator) -> Vec<(String, u16)> {
    emu.state
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/oauth/token"))
        .map(|r| (r.auth_scheme, r.status))
        .collect()
}

#[tokio::test]
async fn each_client_authentication_method_gets_a_token_and_reads() {
    let emu = emulator("rsa.pub.pem").await;
    let ec = emulator("ec.pub.pem").await;
    let cases = [
        (&emu, "alleo", ClientAuth::SecretPost(Secret::new(SECRET)), ""),
        (&emu, "alleo", ClientAuth::SecretBasic(Secret::new(SECRET)), "Basic"),
        (&emu, "alleo-jwt", signing("rsa.pem", None), ""),
        (&emu, "alleo-jwt", signing("rsa.pem", Some(Alg::PS256)), ""),
        (&ec, "alleo-jwt", signing("ec.pem", None), ""),
    ];
    for (emu, id, auth, scheme) in cases {
        let what = auth.describe();
        emu.state.clear_log();
        let client = oauth_client(emu, id, auth);
        assert_eq!(client.profit_version().await.expect(&what), "7.7.10", "{what}");
        client.metainfo().await.expect("metainfo");
        // One token for both calls, sent the method's way; the calls carry it.
        assert_eq!(token_requests(emu), vec![(scheme.to_string(), 200)], "{what}");
        let bearer = emu
            .state
            .requests()
            .iter()
            .filter(|r| r.auth_scheme == "Bearer")
            .count();
        assert_eq!(bearer, 2, "{what}");
    }
}

#[tokio::test]
async fn refused_credentials_say_what_to_do_and_are_not_retried() {
    let emu = emulator("rsa.pub.pem").await;
    let cases = [
        (
            "alleo",
            ClientAuth::SecretPost(Secret::new("wrong-secret")),
            "wrong or has expired",
        ),
        (
            "alleo",
            ClientAuth::SecretBasic(Secret::new("wrong-secret")),
            "wrong or has expired",
        ),
        (
            "alleo-jwt",
            signing("other-rsa.pem", None),
            "does not match the public key",
        ),
    ];
    for (id, auth, says) in cases {
        emu.state.clear_log();
        let err = oauth_client(&emu, id, auth).metainfo().await.expect_err("refused");
        let text = err.to_string();
        assert!(
            matches!(&err, AfasError::OAuth { error, .. } if error == "invalid_client"),
            "{err:?}"
        );
        assert!(text.contains(says) && !text.contains("wrong-secret"), "{text}");
        assert!(!err.is_transient());
        assert_eq!(token_requests(&emu).len(), 1, "a refusal is not retried: {text}");
    }

    // A secret past its expiry date: AFAS says so, and so do we.
    let mut auth = AuthSetup::token(token());
    auth.oauth = Some(("alleo".into(), SECRET.into()));
    auth.oauth_secret_expires = Some(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    let expired = spawn_emulator_with(EmulatorState::new(vec![("d".into(), items(1))], auth)).await;
    let err = oauth_client(&expired, "alleo", ClientAuth::SecretPost(Secret::new(SECRET)))
        .metainfo()
        .await
        .expect_err("expired");
    let text = err.to_string();
    assert!(
        text.contains("has expired") && text.contains("afas.oauth_client_secret_expires"),
        "{text}"
    );
    assert!(!text.contains(SECRET));

    // A connector still on the classic token refuses OAuth, and says why.
    emu.state.set_connector_mode(ConnectorMode::Token);
    let err = oauth_client(&emu, "alleo", ClientAuth::SecretPost(Secret::new(SECRET)))
        .metainfo()
        .await
        .expect_err("token-only connector");
    assert!(err.to_string().contains("Hybrid"), "{err}");
}

#[tokio::test]
async fn a_revoked_access_token_is_replaced_once_and_a_busy_token_endpoint_is_retried() {
    let emu = emulator("rsa.pub.pem").await;
    let client = oauth_client(&emu, "alleo-jwt", signing("rsa.pem", None));
    client.metainfo().await.expect("first");
    // AFAS forgets the token: 401 invalid_token, one new token, success.
    emu.state.expire_oauth_tokens();
    client.metainfo().await.expect("refreshed");
    assert_eq!(token_requests(&emu).len(), 2);
    let refused: Vec<_> = emu.state.requests().into_iter().filter(|r| r.status == 401).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");

    // The token endpoint's 503 (its replay store is down) is transient.
    emu.state.expire_oauth_tokens();
    emu.state.clear_log();
    emu.state.add_rule(FaultRule::new(
        "/oauth/token",
        1,
        2,
        FaultAction::Status {
            status: 503,
            body: String::new(),
        },
    ));
    client.metainfo().await.expect("retried past the 503s");
    let statuses: Vec<u16> = token_requests(&emu).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[tokio::test]
async fn the_emulator_refuses_a_replayed_or_misaddressed_assertion() {
    let emu = emulator("ec.pub.pem").await;
    let key = SigningKey::from_pem(&key_file("ec.pem"), None).expect("key");
    let url = format!("{}/oauth/token", emu.base_url());
    let now = jiff::Timestamp::now().as_second();
    let post = |assertion: String| {
        let url = url.clone();
        async move {
            let form = [
                ("grant_type", "client_credentials".to_string()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ),
                ("client_assertion", assertion),
            ];
            let resp = http().post(url).form(&form).send().await.expect("post");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or_default())
        }
    };
    let once = key.assertion("alleo-jwt", &url, now).expect("sign");
    assert_eq!(post(once.clone()).await.0, 200);
    let (status, body) = post(once).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "replayed: {body}"
    );
    let elsewhere = key
        .assertion("alleo-jwt", "https://other.example/token", now)
        .expect("s");
    assert_eq!(post(elsewhere).await.0, 401, "wrong aud");
    let stale = key.assertion("alleo-jwt", &url, now - 3600).expect("s");
    assert_eq!(post(stale).await.0, 401, "expired");
    let stranger = key.assertion("someone-else", &url, now).expect("s");
    assert_eq!(post(stranger).await.0, 401, "other client");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

/// README, "Moving from the App Connector token to OAuth", step by step
/// with the daemon running: no scheduled run missed, none failed.
#[tokio::test]
async fn moving_from_the_token_to_oauth_misses_no_run() {
    let mut auth = AuthSetup::token(token());
    auth.oauth = Some(("alleo".into(), SECRET.into()));
    auth.mode = ConnectorMode::Token;
    let ds = generate(8, 40, jiff::civil::Date::new(2026, 11, 24).expect("d"));
    let emu = spawn_emulator_with(EmulatorState::new(vec![("d".into(), ds)], auth)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Three slots 10 s apart (Amsterdam time), besides the catch-up run.
    let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::get("Europe/Amsterdam").expect("tz"));
    let slots: Vec<String> = [12, 22, 32]
        .iter()
        .map(|s| {
            let t = now.checked_add(jiff::ToSpan::seconds(*s)).expect("t");
            format!("\"{}\"", t.strftime("%H:%M:%S"))
        })
        .collect();
    let extra = format!(
        "\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[schedule]\ntimes = [{}]\n\n[http]\nbind = \"127.0.0.1:{port}\"\n\n[sink.files]\ndir = \"out\"\n",
        slots.join(", ")
    );
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
    let cfg_s = cfg.to_str().expect("p").to_string();
    let log_path = dir.path().join("daemon.log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(["--config", &cfg_s, "--log-level", "info", "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("daemon");
    let runs = |cfg: String| async move {
        let (code, out, err) = run_bin(&["--config", &cfg, "--json", "history"]).await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Vec<Value>>(&out).unwrap_or_default()
    };
    let metrics = || async move {
        http()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    wait_for("/healthz", 20, || async move {
        http()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_for("the catch-up run", 30, || {
        let f = runs(cfg_s.clone());
        async move { !f.await.is_empty() }
    })
    .await;
    // Before: the classic token, whose end AFAS reports, and a warning.
    let m = metrics().await;
    let may_2027 = 1_809_129_600.0; // 2027-05-01T00:00:00Z
    assert_eq!(metric(&m, "afas_sync_afas_token_expiry_timestamp_seconds"), may_2027);
    let (code, out, _) = run_bin(&["--config", &cfg_s, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN AFAS credentials expiry") && out.contains("stops working on 2027-05-01"),
        "{out}"
    );

    // 1. In AFAS, the App connector goes to Hybrid.
    emu.state.set_connector_mode(ConnectorMode::Hybrid);
    // 2. The OAuth keys go into the config, the secret into its file.
    std::fs::write(dir.path().join("oauth-secret"), SECRET).expect("secret");
    set_mode_600(&dir.path().join("oauth-secret"));
    let text = std::fs::read_to_string(&cfg).expect("cfg").replace(
        "token_file = \"afas-token\"",
        "auth = \"oauth\"\noauth_client_id = \"alleo\"\noauth_client_secret_file = \"oauth-secret\"\noauth_client_secret_expires = 2027-05-28",
    );
    std::fs::write(&cfg, text).expect("cfg");
    // 3. check passes with OAuth.
    let (code, out, err) = run_bin(&["--config", &cfg_s, "check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("PASS AFAS authentication") && out.contains("OAuth client `alleo`, client_secret_post"),
        "{out}"
    );
    assert!(
        out.contains("PASS AFAS credentials expiry") && out.contains("2027-05-28"),
        "{out}"
    );
    // 4. Reload.
    let pid = daemon.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    wait_for_log(&log_path, "configuration reloaded", 10).await;
    let switched = emu.state.requests().len();
    wait_for("the first scheduled run", 30, || {
        let f = runs(cfg_s.clone());
        async move { f.await.len() >= 2 }
    })
    .await;
    // 5. In AFAS, the App connector goes to OAuth only.
    emu.state.set_connector_mode(ConnectorMode::OAuth);
    wait_for("the last scheduled run", 40, || {
        let f = runs(cfg_s.clone());
        async move { f.await.len() >= 4 }
    })
    .await;

    let history = runs(cfg_s.clone()).await;
    assert_eq!(history.len(), 4, "the catch-up run and three slots: {history:?}");
    for run in &history {
        assert_ne!(run["outcome"].as_str(), Some("Failed"), "{run}");
    }
    let after: Vec<_> = emu.state.requests().into_iter().skip(switched).collect();
    assert!(
        after.iter().all(|r| r.auth_scheme != "AfasToken"),
        "OAuth only after the reload"
    );
    assert!(after.iter().all(|r| r.status == 200), "{after:?}");
    assert!(after.iter().any(|r| r.auth_scheme == "Bearer"));
    let m = metrics().await;
    assert_eq!(metric(&m, "afas_sync_afas_token_expiry_timestamp_seconds"), 0.0);
    assert_eq!(
        metric(&m, "afas_sync_afas_oauth_secret_expiry_timestamp_seconds"),
        1_811_462_400.0 // 2027-05-28T00:00:00Z
    );
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        !log.contains(SECRET) && !log.contains(TOKEN_HEX),
        "no secret in the log"
    );
    assert!(
        log.contains("stops working on 2027"),
        "the daemon warned at start: {log}"
    );
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await;
}

fn set_mode_600(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}
