//! The shipped binary: configuration errors exit non-zero naming the option, `--config-test`
//! validates, JSON logs have one line per request and never contain secrets, and SIGTERM
//! shuts down cleanly.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey-proxy");

fn base(issuer: &str, upstream: &str, port: u16) -> Vec<String> {
    let mut a = Proxy::args(issuer, upstream, &[]);
    a.retain(|x| x != "--request-logging=false");
    a.push(format!("--http-address=127.0.0.1:{port}"));
    a
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_option() {
    let out = Command::new(BIN)
        .args([
            "--provider=oidc",
            "--oidc-issuer-url=https://idp.example.com",
            "--client-id=a",
            "--client-secret=b",
            "--cookie-secret=short",
            "--email-domain=*",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("option `cookie_secret`") && err.contains("openssl rand -base64 32"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.cfg");
    std::fs::write(&cfg, "provider = \"oidc\"\nupstream = \"http://127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN).arg(format!("--config={}", cfg.display())).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown option `upstream`")
            && String::from_utf8_lossy(&out.stderr).contains("`upstreams`")
    );

    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_test_validates_and_exits() {
    let args = base("https://idp.example.com", "http://127.0.0.1:8080/", 0);
    let out = Command::new(BIN).args(&args).arg("--config-test").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("configuration OK"));
}

#[test]
fn env_configuration_like_a_sidecar() {
    // The shape a Kubernetes sidecar uses: flags plus secrets from the environment.
    let out = Command::new(BIN)
        .args([
            "--provider=oidc",
            "--oidc-issuer-url=https://idp.example.com/v2.0",
            "--email-domain=*",
            "--skip-provider-button",
            "--upstream=http://127.0.0.1:8080",
            "--http-address=0.0.0.0:4180",
            "--config-test",
        ])
        .env("OAUTH2_PROXY_CLIENT_ID", "app")
        .env("OAUTH2_PROXY_CLIENT_SECRET", "s")
        .env("OAUTH2_PROXY_COOKIE_SECRET", COOKIE_SECRET)
        .env("OAUTH2_PROXY_SERVICE_HOST", "10.0.0.1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn json_logs_one_line_per_request_without_secrets_and_sigterm_stops() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}/oauth2/callback")], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let mut args = base(&idp.issuer, &upstream.url, port);
    let metrics_port = free_port();
    args.extend([
        "--logging-format=json".into(),
        "--pass-access-token".into(),
        format!("--metrics-address=127.0.0.1:{metrics_port}"),
    ]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = browser();
    let url = format!("http://127.0.0.1:{port}");
    eventually("the proxy to become ready", Duration::from_secs(30), || async {
        client
            .get(format!("{url}/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    let callback = start_and_authenticate(&client, &url, "/", "alice", "alice-password").await;
    let code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let resp = client.get(&callback).send().await.unwrap();
    let session_value = set_cookie_value(&resp, "_oauth2_proxy").unwrap();
    let view: serde_json::Value = client.get(format!("{url}/page")).send().await.unwrap().json().await.unwrap();
    let access_token = view["headers"]["x-forwarded-access-token"][0].as_str().unwrap().to_string();

    assert_eq!(client.get(format!("{url}/oauth2/auth")).send().await.unwrap().status(), 202);
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sidekey_proxy_requests_total{route=\"app\",code=\"200\"} 1",
        "sidekey_proxy_requests_total{route=\"callback\",code=\"302\"} 1",
        "sidekey_proxy_requests_total{route=\"auth\",code=\"202\"} 1",
        "sidekey_proxy_auth_decisions_total{decision=\"allowed\"} 2",
        "sidekey_proxy_idp_request_duration_seconds_count{operation=\"token\"} 1",
        "sidekey_proxy_idp_request_duration_seconds_count{operation=\"discovery\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains(&access_token) && !metrics.contains("alice"),
        "no identities in metrics"
    );

    // SIGTERM: the process drains and exits 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut logs = String::new();
        child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
        (status, logs)
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(30), status).await.unwrap().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{logs}");

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "sidekey::request").collect();
    for path in ["/oauth2/start", "/oauth2/callback", "/page"] {
        assert_eq!(
            requests.iter().filter(|r| r["path"] == path).count(),
            1,
            "one line for {path}: {logs}"
        );
    }
    let page = requests.iter().find(|r| r["path"] == "/page").unwrap();
    assert_eq!(page["status"], 200);
    assert_eq!(page["user"], "alice@example.com");
    assert!(page["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    // The login event is logged once, with the id of the callback request that made it.
    let logins: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "sidekey::auth" && l["event"] == "login")
        .collect();
    assert_eq!(logins.len(), 1, "{logs}");
    let callback_line = requests.iter().find(|r| r["path"] == "/oauth2/callback").unwrap();
    assert_eq!(logins[0]["span"]["request_id"], callback_line["request_id"], "{logs}");
    assert_eq!(logins[0]["email"], "alice@example.com");
    for secret in [
        session_value.as_str(),
        access_token.as_str(),
        code.as_str(),
        COOKIE_SECRET,
        CLIENT_SECRET,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}
