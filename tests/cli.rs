//! The real binary: `check`, `config`, `fetch`, exit codes, and that no
//! secret reaches any output at any log level.

mod common;

use afas_sync::emulator::data::{generate, Dataset};
use base64::Engine as _;
use common::*;

fn company() -> Dataset {
    generate(3, 120, jiff::civil::Date::new(2026, 11, 24).expect("date"))
}

#[tokio::test]
async fn check_passes_against_the_emulator() {
    let emu = spawn_emulator(company()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &emu.base_url(), &token().to_xml(), "");
    // As the unit's StateDirectoryMode leaves it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let (code, out, err) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("PASS")).count(), 9, "{out}");
    // A classic token always warns: AFAS retires it. The emulator reports
    // 2027-05-01 as AFAS does for existing tokens.
    let warn: Vec<&str> = out.lines().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(warn.len(), 1, "{out}");
    assert!(
        warn[0].contains("stops working on 2027-05-01")
            && warn[0].contains("Moving from the App Connector token to OAuth"),
        "{out}"
    );
    // A state directory others can enter is named, with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (code, out, _) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
        assert_eq!(code, 0, "a warning: {out}");
        assert!(
            out.lines().any(|l| l.starts_with("WARN")
                && l.contains("state file private")
                && l.contains(&format!("chmod 700 {}", dir.path().display()))),
            "{out}"
        );
    }
}

#[tokio::test]
async fn check_fails_with_its_own_message_for_each_problem() {
    let emu = spawn_emulator(company()).await;

    // A wrong token.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &emu.base_url(), &"B".repeat(64), "");
    let (code, out, _) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("FAIL AFAS token accepted"), "{out}");
    assert!(out.contains("401"), "{out}");

    // A mapped field the connector lacks.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        &emu.base_url(),
        TOKEN_HEX,
        "\n[mapping.employees]\nemail = \"Email_werk\"\n",
    );
    let (code, out, err) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL connector Profit_Employees_Alleo fields")
                && l.contains("`Email_werk`")
                && l.contains("mapping.employees.email")),
        "{out}"
    );

    // AFAS not reachable.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = emu.base_url();
    emu.stop().await;
    let cfg = write_config(dir.path(), &url, TOKEN_HEX, "");
    let (code, out, _) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL AFAS reachable") && out.contains("cannot reach AFAS"),
        "{out}"
    );

    // A malformed token fails before any network use.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        &url,
        "<token><version>1</version><data>12</data></token>",
        "",
    );
    let (code, out, _) = run_bin(&["--config", cfg.to_str().expect("path"), "check"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL AFAS authentication") && out.contains("64 hexadecimal"),
        "{out}"
    );
}

#[tokio::test]
async fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("afas-token"), TOKEN_HEX).expect("token");
    let cases = [
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\nemplyees = 1\n",
            "emplyees",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\npage_size = \"big\"\n",
            "page_size",
        ),
        ("[afas]\ntoken_file = \"afas-token\"\n", "afas.profit_id"),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\nconcurrency = 12\n",
            "afas.concurrency",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\nenvironment = \"staging\"\n",
            "staging",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"missing-file\"\n",
            "afas.token_file",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\n[schedule]\ntimes = [\"25:00\"]\n",
            "schedule.times",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\n[surprise]\nx = 1\n",
            "surprise",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\nauth = \"oauth\"\noauth_client_id = \"c\"\noauth_client_auth = \"private_key_jwt\"\noauth_private_key_file = \"afas-token\"\n",
            "afas.oauth_private_key_file",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\nauth = \"oauth\"\noauth_client_id = \"c\"\noauth_client_auth = \"private_key_jwt\"\noauth_private_key_file = \"ec.pem\"\noauth_signing_alg = \"PS256\"\n",
            "PS256 needs an RSA key",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\nauth = \"oauth\"\noauth_client_id = \"c\"\noauth_client_secret_file = \"afas-token\"\noauth_signing_alg = \"ES256\"\n",
            "afas.oauth_signing_alg",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\nauth = \"oauth\"\noauth_client_id = \"c\"\noauth_client_secret_file = \"afas-token\"\noauth_client_secret_expires = \"next year\"\n",
            "afas.oauth_client_secret_expires",
        ),
        (
            "[afas]\nprofit_id = \"12345\"\nauth = \"oauth\"\noauth_client_id = \"c\"\noauth_client_auth = \"client_secret_jwt\"\noauth_client_secret_file = \"afas-token\"\n",
            "client_secret_jwt",
        ),
    ];
    std::fs::copy(
        format!("{}/tests/fixtures/keys/ec.pem", env!("CARGO_MANIFEST_DIR")),
        dir.path().join("ec.pem"),
    )
    .expect("key");
    for (text, key) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let (code, _, err) = run_bin(&["--config", path.to_str().expect("path"), "config", "check"]).await;
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
    // The parser's line number is passed on.
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[afas]\nprofit_id = \"12345\"\n\npage_size = \"big\"\n").expect("write");
    let (_, _, err) = run_bin(&["--config", path.to_str().expect("path"), "config", "check"]).await;
    assert!(err.contains("line 4"), "{err}");
    // A token pasted under a misspelled key, or under a key of another
    // type: the key and line are named, the text never.
    for text in [
        "[afas]\nprofit_id = \"12345\"\ntokenn = \"s3cr3t-pasted-token\"\n",
        "[afas]\nprofit_id = \"12345\"\npage_size = \"s3cr3t-pasted-token\"\n",
        "[afas]\nprofit_id = \"12345\"\ns3cr3t-pasted-token\n",
    ] {
        std::fs::write(&path, text).expect("write");
        let (code, _, err) = run_bin(&["--config", path.to_str().expect("path"), "config", "check"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("s3cr3t"), "the text is never printed: {err}");
    }
    // A missing file.
    let (code, _, err) = run_bin(&["--config", "/nonexistent/afas.toml", "check"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/afas.toml"), "{err}");
}

#[tokio::test]
async fn a_section_takes_its_documented_defaults_for_the_keys_left_out_and_scim_attributes_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("afas-token"), TOKEN_HEX).expect("token");
    std::fs::write(dir.path().join("scim-token"), "t0ken").expect("token");
    let base = "[afas]\nprofit_id = \"12345\"\ntoken_file = \"afas-token\"\n";
    let path = dir.path().join("config.toml");
    let check = |text: String| {
        std::fs::write(&path, text).expect("write");
        let p = path.to_str().expect("path").to_string();
        async move { run_bin(&["--config", &p, "--json", "config", "check"]).await }
    };
    // [afas.contracts] without `connector`: the README's default.
    let (code, out, err) = check(format!(
        "{base}[afas.contracts]\nkey = [\"EmployeeId\", \"DateStart\"]\n"
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Profit_Contract"), "{out}");
    let (code, out, err) = check(format!("{base}[afas.employees]\nkey = [\"-EmployeeId\"]\n")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Profit_Employees_Alleo"), "{out}");
    let scim = "[sink.scim]\nurl = \"https://scim.example/v2\"\ntoken_file = \"scim-token\"\n";
    let (code, _, err) = check(format!(
        "{base}{scim}[sink.scim.attributes]\nsalary = \"urn:x:User:pay\"\ndepartment = []\n"
    ))
    .await;
    assert_eq!(code, 0, "{err}");
    for (extra, key) in [
        (
            "[sink.scim.attributes]\nsalaris = \"urn:x:User:pay\"\n",
            "sink.scim.attributes.salaris",
        ),
        (
            "released_user_name = \"gone@example.invalid\"\n",
            "sink.scim.released_user_name",
        ),
    ] {
        let (code, _, err) = check(format!("{base}{scim}{extra}")).await;
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
}

#[tokio::test]
async fn plain_http_to_another_host_is_refused_per_key_unless_the_risk_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (f, text) in [
        ("afas-token", TOKEN_HEX),
        ("t", "secret"),
        ("w", "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
    ] {
        std::fs::write(dir.path().join(f), text).expect("secret");
    }
    let afas = |url: &str| format!("[afas]\nbase_url = \"{url}\"\ntoken_file = \"afas-token\"\n");
    let https = afas("https://12345.rest.afas.online/ProfitRestServices");
    let cases = [
        ("afas.base_url", afas("http://afas.example/ProfitRestServices")),
        ("sink.scim.url", format!("{https}[sink.scim]\nurl = \"http://scim.example/v2\"\ntoken_file = \"t\"\n")),
        (
            "sink.scim.oauth_token_url",
            format!("{https}[sink.scim]\nurl = \"https://scim.example/v2\"\noauth_token_url = \"http://login.example/token\"\noauth_client_id = \"c\"\noauth_client_secret_file = \"t\"\n"),
        ),
        ("sink.webhook.url", format!("{https}[sink.webhook]\nurl = \"http://hooks.example/in\"\nsecret_file = \"w\"\n")),
    ];
    let path = dir.path().join("config.toml");
    let p = path.to_str().expect("path").to_string();
    for (key, text) in cases {
        std::fs::write(&path, &text).expect("write");
        let (code, _, err) = run_bin(&["--config", &p, "config", "check"]).await;
        assert_eq!(code, 2, "{key}: {err}");
        assert!(err.contains(key) && err.contains("unencrypted"), "{key}: {err}");
        // The opt-in, which names the risk, lets it through with a warning.
        std::fs::write(&path, format!("send_secrets_over_plain_http = true\n{text}")).expect("write");
        let (code, _, err) = run_bin(&["--config", &p, "config", "check"]).await;
        assert_eq!(code, 0, "{key}: {err}");
        assert!(
            err.contains(key) && err.contains("unencrypted"),
            "a warning names {key}: {err}"
        );
        // Loopback stays allowed (the emulator, a local proxy).
        let local = text
            .replace("afas.example", "127.0.0.1:8095")
            .replace("scim.example", "localhost:9000")
            .replace("login.example", "[::1]:9001")
            .replace("hooks.example", "127.0.0.2:9002");
        std::fs::write(&path, &local).expect("write");
        let (code, _, err) = run_bin(&["--config", &p, "config", "check"]).await;
        assert_eq!(code, 0, "{key} on loopback: {err}");
    }
}

#[tokio::test]
async fn the_example_config_validates() {
    let (code, example, _) = run_bin(&["config", "example"]).await;
    assert_eq!(code, 0);
    assert!(
        example.lines().filter(|l| l.trim_start().starts_with('#')).count() > 40,
        "fully commented"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &example).expect("write");
    // The token comes from the systemd credential directory.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("afas_token"), token().to_xml()).expect("token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(creds.join("afas_token"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let cfg = path.to_str().expect("path");
    let creds_s = creds.to_str().expect("p");
    let (code, out, err) = run_bin_env(
        &["--config", cfg, "config", "check"],
        &[("CREDENTIALS_DIRECTORY", creds_s)],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("https://12345.rest.afas.online/ProfitRestServices"),
        "{out}"
    );
    // Without the credential, the message names the key and the credential.
    let (code, _, err) = run_bin(&["--config", cfg, "config", "check"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("afas.token_file") && err.contains("afas_token"), "{err}");
}

#[tokio::test]
async fn loose_secret_file_permissions_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "http://127.0.0.1:1/ProfitRestServices", TOKEN_HEX, "");
    std::fs::set_permissions(dir.path().join("afas-token"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = run_bin(&["--config", path.to_str().expect("path"), "config", "check"]).await;
    assert_eq!(code, 0);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test]
async fn no_secret_appears_in_any_output_at_trace_level() {
    let mut auth = afas_sync::emulator::AuthSetup::token(token());
    let oauth_secret = "oauth-Secret-0123456789abcdef";
    auth.oauth = Some(("alleo".into(), oauth_secret.into()));
    let keys = format!("{}/tests/fixtures/keys", env!("CARGO_MANIFEST_DIR"));
    let public = std::fs::read(format!("{keys}/rsa.pub.pem")).expect("public key");
    let private = std::fs::read_to_string(format!("{keys}/rsa.pem")).expect("private key");
    auth.oauth_key = Some((
        "alleo-jwt".into(),
        afas_sync::oauth::jwt::VerifyingKey::from_pem(&public).expect("key"),
    ));
    let state = afas_sync::emulator::EmulatorState::new(vec![("d".into(), company())], auth);
    let emu = spawn_emulator_with(state).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(token().to_xml());
    let mut outputs = String::new();

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &emu.base_url(), &token().to_xml(), "");
    let cfg_s = cfg.to_str().expect("path");
    for args in [
        vec!["--log-level", "trace", "--config", cfg_s, "check"],
        vec!["--log-level", "trace", "--config", cfg_s, "fetch", "--limit", "3"],
        vec!["--log-level", "trace", "--config", cfg_s, "--json", "config", "check"],
    ] {
        let (code, out, err) = run_bin(&args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    // `check` at trace level: its exit code, and all it printed is kept.
    let check_traced = |cfg: std::path::PathBuf| async move {
        let (code, out, err) =
            run_bin(&["--log-level", "trace", "--config", cfg.to_str().expect("path"), "check"]).await;
        (code, out.clone(), format!("{out}{err}"))
    };
    // OAuth, including a refused secret.
    let dir2 = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir2.path().join("secret"), oauth_secret).expect("secret");
    let oauth_cfg = write_config(
        dir2.path(),
        &emu.base_url(),
        TOKEN_HEX,
        "auth = \"oauth\"\noauth_client_id = \"alleo\"\noauth_client_secret_file = \"secret\"\n",
    );
    let (code, _, all) = check_traced(oauth_cfg.clone()).await;
    assert_eq!(code, 0, "{all}");
    outputs.push_str(&all);
    std::fs::write(dir2.path().join("secret"), "a-wrong-secret-value").expect("secret");
    let (code, out, all) = check_traced(oauth_cfg).await;
    assert_eq!(code, 1);
    assert!(out.contains("invalid_client"), "{out}");
    outputs.push_str(&all);

    // private_key_jwt: neither the key nor an assertion shows.
    let dir3 = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir3.path().join("key.pem"), &private).expect("key");
    let jwt_cfg = write_config(
        dir3.path(),
        &emu.base_url(),
        TOKEN_HEX,
        "auth = \"oauth\"\noauth_client_id = \"alleo-jwt\"\noauth_client_auth = \"private_key_jwt\"\noauth_private_key_file = \"key.pem\"\n",
    );
    let (code, out, all) = check_traced(jwt_cfg).await;
    assert_eq!(code, 0, "{all}");
    assert!(out.contains("private_key_jwt (RS256)"), "{out}");
    outputs.push_str(&all);
    let key_lines: Vec<&str> = private.lines().filter(|l| !l.starts_with("-----")).collect();
    for line in key_lines {
        assert!(!outputs.contains(line), "private key leaked");
    }
    assert!(!outputs.contains("eyJ"), "a client assertion leaked");

    assert!(outputs.contains("AFAS request"), "trace output was captured");
    for secret in [
        TOKEN_HEX,
        &TOKEN_HEX.to_lowercase(),
        &b64,
        &b64[..40],
        oauth_secret,
        "a-wrong-secret-value",
    ] {
        assert!(!outputs.contains(secret), "secret {}… leaked", &secret[..8]);
    }
    // Bearer tokens the emulator issued must not be logged either.
    assert!(!outputs.contains("emu-"), "access token leaked");
}

#[tokio::test]
async fn fetch_prints_rows_as_ndjson() {
    let emu = spawn_emulator(company()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, "page_size = 7");
    let (code, out, err) = run_bin(&[
        "--config",
        cfg.to_str().expect("path"),
        "fetch",
        "--connector",
        "contracts",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let want = company().connectors["Profit_Contract"].rows.len();
    assert_eq!(out.lines().count(), want);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert!(v.get("SequenceNumber").is_some());
    }
}

#[tokio::test]
async fn the_demo_syncs_two_days_then_moves_to_oauth_with_the_daemon_running() {
    let (code, out, err) = run_bin(&["demo", "--employees", "60"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("WARN AFAS credentials expiry"), "{out}");
    assert!(
        out.contains(
            "PASS AFAS authentication                      OAuth client `alleo-demo`, private_key_jwt (ES256)"
        ),
        "{out}"
    );
    assert!(
        out.contains("the run signed in with OAuth") && out.contains("none with the token"),
        "{out}"
    );
    let runs: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains("  20"))
        .collect();
    assert_eq!(runs.len(), 3, "{out}");
    assert!(runs.iter().all(|l| !l.contains("failed")), "{out}");
}
