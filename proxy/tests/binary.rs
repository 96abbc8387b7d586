//! The shipped binary: configuration errors exit non-zero naming the option, `--config-test`
//! validates and prints the start-up warnings (`--strict` makes them fatal), real-world
//! oauth2-proxy configurations load, `--help` is organised, JSON logs have one line per
//! request and never contain secrets, and SIGTERM shuts down cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey-proxy");

fn base(issuer: &str, upstream: &str, port: u16) -> Vec<String> {
    let mut a = Proxy::args(issuer, upstream, &[]);
    a.retain(|x| x != "--request-logging=false");
    a.push(format!("--http-address=127.0.0.1:{port}"));
    a
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_option() {
    // In a pod the same line goes to the termination log, for `kubectl describe pod` and the
    // policy status; the file is only written where it exists.
    let dir = tempfile::tempdir().unwrap();
    let termination_log = dir.path().join("termination-log");
    std::fs::write(&termination_log, "").unwrap();
    let out = Command::new(BIN)
        .env("SIDEKEY_TERMINATION_LOG", &termination_log)
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
    assert_eq!(std::fs::read_to_string(&termination_log).unwrap(), err.trim_end());
    let absent = dir.path().join("not-in-a-pod");
    let out = Command::new(BIN)
        .env("SIDEKEY_TERMINATION_LOG", &absent)
        .arg("--cookie-secret=short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!absent.exists(), "the termination log is never created");

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

/// The messages of the `WARN` lines in text-format logs.
fn warnings(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once(" WARN sidekey_proxy: ").map(|(_, m)| m.to_string()))
        .collect()
}

struct Compat {
    file: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Each warning the run must print, by a part of its text, in order.
    warnings: &'static [&'static str],
}

/// What oauth2-proxy's Helm chart puts in the environment (placeholders, as in its values).
const CHART_SECRETS: &[(&str, &str)] = &[
    ("OAUTH2_PROXY_CLIENT_ID", "XXXXXXX"),
    ("OAUTH2_PROXY_CLIENT_SECRET", "XXXXXXXX"),
    ("OAUTH2_PROXY_COOKIE_SECRET", "XXXXXXXXXXXXXXXX"),
];

/// tests/compat/README.md says why each file needs what it gets here.
const COMPAT: &[Compat] = &[
    Compat {
        file: "oauth2-proxy-example.cfg",
        args: &[
            "--provider=oidc",
            "--oidc-issuer-url=https://accounts.google.com",
            "--email-domain=yourcompany.com",
        ],
        env: CHART_SECRETS,
        warnings: &["no upstream is configured"],
    },
    Compat {
        file: "helm-chart-default.cfg",
        args: &[
            "--http-address=0.0.0.0:4180",
            "--https-address=0.0.0.0:4443",
            "--metrics-address=0.0.0.0:44180",
            "--provider=oidc",
            "--oidc-issuer-url=https://accounts.google.com",
        ],
        env: CHART_SECRETS,
        warnings: &["option `https_address` has no effect without tls_cert_file and tls_key_file"],
    },
    Compat {
        file: "traefik-forward-auth-dex.cfg",
        args: &["--oidc-issuer-url=https://dex.localhost:4190/dex"],
        env: &[],
        warnings: &[],
    },
    Compat {
        file: "entra-id-traefik.cfg",
        args: &[],
        env: &[],
        warnings: &[],
    },
    Compat {
        file: "nginx-auth-request.cfg",
        args: &[],
        env: &[],
        warnings: &[],
    },
    Compat {
        file: "keycloak-oidc.cfg",
        args: &[],
        env: &[],
        warnings: &["provider = \"keycloak-oidc\" runs as provider = \"oidc\""],
    },
    Compat {
        file: "wso2-identity-server.cfg",
        args: &[],
        env: &[],
        warnings: &[],
    },
    Compat {
        file: "crossid.cfg",
        args: &[],
        env: &[],
        warnings: &[],
    },
    Compat {
        file: "azure-legacy.cfg",
        args: &[],
        env: &[],
        warnings: &["provider = \"azure\" (oauth2-proxy's deprecated Azure provider) runs as provider = \"entra-id\""],
    },
];

#[test]
fn real_world_oauth2_proxy_configs_pass_config_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cfg") || n.ends_with(".toml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = COMPAT.iter().map(|c| c.file.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every file in tests/compat has an entry here, and every entry a file"
    );
    for c in COMPAT {
        assert!(
            readme.contains(&format!("`{}`", c.file)),
            "tests/compat/README.md has no row for {}",
            c.file
        );
        let path = dir.join(c.file);
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("# Source: "), "{}: the first line names the source", c.file);
        let run = |strict: bool| {
            let mut cmd = Command::new(BIN);
            cmd.env_clear()
                .envs(c.env.iter().copied())
                .arg(format!("--config={}", path.display()))
                .args(c.args)
                .arg("--config-test");
            if strict {
                cmd.arg("--strict");
            }
            cmd.output().unwrap()
        };
        let out = run(false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", c.file);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("configuration OK"), "{}", c.file);
        let printed = warnings(&stderr);
        assert_eq!(printed.len(), c.warnings.len(), "{}: {printed:#?}", c.file);
        for (got, want) in printed.iter().zip(c.warnings) {
            assert!(got.contains(want), "{}: {got}", c.file);
        }
        if c.warnings.is_empty() {
            let out = run(true);
            assert!(
                out.status.success(),
                "{} with --strict: {}",
                c.file,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn config_test_prints_the_warnings_a_start_logs_and_strict_makes_them_fatal() {
    // No upstream, and a misspelt variable: two warnings.
    let port = free_port();
    let args = [
        "--provider=oidc".to_string(),
        format!("--oidc-issuer-url={}", dead_issuer()),
        "--client-id=app".into(),
        "--client-secret=s".into(),
        format!("--cookie-secret={COOKIE_SECRET}"),
        "--email-domain=*".into(),
        format!("--http-address=127.0.0.1:{port}"),
    ];
    let env = [("OAUTH2_PROXY_UPSTREAM", "http://127.0.0.1:8080/")];
    // An empty environment otherwise: RUST_LOG or a stray OAUTH2_PROXY_* would change the logs.
    let out = Command::new(BIN)
        .env_clear()
        .args(&args)
        .arg("--config-test")
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tested = warnings(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        tested,
        [
            "ignoring unknown environment variable OAUTH2_PROXY_UPSTREAM (did you mean `OAUTH2_PROXY_UPSTREAMS`?)",
            "no upstream is configured: signed-in requests outside /oauth2 answer 404; set upstreams, e.g. [\"http://127.0.0.1:8080/\"], or [\"static://202\"] for forward auth only",
        ]
    );

    // A real start logs the same ones before it serves.
    let mut child = Command::new(BIN)
        .env_clear()
        .args(&args)
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let mut started = Vec::new();
    while started.len() < tested.len() {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the start-up warnings within 30 s");
        started.extend(warnings(&line));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(started, tested);

    for extra in [&["--config-test", "--strict"][..], &["--strict"]] {
        let out = Command::new(BIN).env_clear().args(&args).args(extra).envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(warnings(&stderr), tested, "{extra:?}");
        assert!(
            stderr.contains("sidekey-proxy: --strict: 2 start-up warning(s) above; fix them, or drop --strict"),
            "{stderr}"
        );
    }
}

/// Each line the child writes to stderr, as it comes.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn an_issuer_answering_404_at_discovery_says_check_oidc_issuer_url() {
    // A web server that is not an OpenID provider: 404 for everything.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}/realms/typo", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
            );
        }
    });
    let port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .args(base(&issuer, "http://127.0.0.1:1/", port))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let failure = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a discovery failure within 30 s");
        if line.contains("OIDC discovery failed") {
            break line;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let want = format!(
        "{issuer}/.well-known/openid-configuration answered 404 Not Found, so oidc_issuer_url does not name an OpenID provider; check oidc_issuer_url"
    );
    assert!(failure.contains(&want), "{failure}");
    assert!(!failure.contains("unreachable"), "{failure}");
}

#[test]
fn help_groups_the_options_shows_defaults_and_ends_with_an_example() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut at = 0;
    for heading in [
        "Configuration:",
        "Provider:",
        "Who may sign in:",
        "Upstreams and identity headers:",
        "Forward auth and front ends:",
        "Cookies:",
        "Sessions:",
        "Server:",
        "TLS:",
        "Logging:",
    ] {
        let found = help[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("{heading} after the previous heading in:\n{help}"));
        at += found + 1;
    }
    for shown in [
        "--strict",
        "[default: 127.0.0.1:4180]",
        "--cookie-expire <DURATION>",
        "[default: 168h0m0s]",
        "--upstream <LIST>",
    ] {
        assert!(help.contains(shown), "{shown} in:\n{help}");
    }
    assert!(!help.contains("--trusted-ip "), "options sidekey refuses stay out of --help");
    let tail = help.trim_end();
    assert!(
        tail.contains("Example (an OpenID provider in front of an app on port 8080):\n  sidekey-proxy --provider=oidc"),
        "{help}"
    );
    assert!(
        tail.ends_with("https://github.com/sidekey-dev/sidekey/blob/main/docs/configuration.md"),
        "{help}"
    );
    for flag in ["-V", "--version"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("sidekey-proxy {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}
