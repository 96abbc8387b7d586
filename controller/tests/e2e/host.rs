//! What the e2e tests run on the host, beside the node: a test CA and an https certificate
//! for the bridge address, the OpenID provider, Redis, and the browser.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::REPO;

/// The node's bridge address (`sidekey0`): the host as pods see it.
pub const BRIDGE: &str = "10.88.0.1";

/// A free TCP port on the bridge address.
pub fn free_bridge_port() -> u16 {
    TcpListener::bind((BRIDGE, 0))
        .expect("bind on the bridge (is the node up?)")
        .local_addr()
        .expect("addr")
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA made for this run, and a certificate it signed for `https://10.88.0.1`.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(d));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=sidekey e2e test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "idp.key",
            "-out",
            "idp.csr",
            "-subj",
            &format!("/CN={BRIDGE}"),
        ]);
        std::fs::write(
            d.join("idp.ext"),
            format!("subjectAltName=IP:{BRIDGE}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "idp.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "idp.crt",
            "-days",
            "1",
            "-extfile",
            "idp.ext",
        ]);
        TestCa { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `node tests/idp/server.mjs`, serving https on the bridge with the test CA's certificate.
pub struct Idp {
    child: Child,
    pub base: String,
    pub issuer: String,
    ca_file: PathBuf,
    log: PathBuf,
}

impl Idp {
    /// `config` is server.mjs's; host and tls are added. `cluster_ca` is trusted for fetching
    /// the cluster issuer's keys (the API server's certificate).
    pub fn start(ca: &TestCa, cluster_ca: &Path, mut config: Value) -> Self {
        config["host"] = BRIDGE.into();
        config["tls"] = serde_json::json!({"cert": ca.file("idp.crt"), "key": ca.file("idp.key")});
        let logs = std::env::temp_dir().join("sidekey-e2e-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("idp-{:06x}.log", rand::random::<u32>() & 0xff_ffff));
        let mut child = Command::new("node")
            .arg(Path::new(REPO).join("tests/idp/server.mjs"))
            .arg(config.to_string())
            .env("NODE_EXTRA_CA_CERTS", cluster_ca)
            .current_dir(REPO)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("node runs (tests/setup.sh installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the IdP did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Idp {
            child,
            base: ready["base"].as_str().expect("base").into(),
            issuer: ready["issuer"].as_str().expect("issuer").into(),
            ca_file: ca.file("ca.crt"),
            log,
        }
    }

    /// `GET /_test/stats`: what the IdP's Entra emulation saw.
    pub fn stats(&self) -> Value {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "10", "--cacert"])
            .arg(&self.ca_file)
            .arg(format!("{}/_test/stats", self.base))
            .output()
            .expect("curl");
        assert!(out.status.success(), "IdP stats: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("stats json")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- IdP log ({}) ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Debian's redis-server on the bridge address (no persistence), for the pods' sessions.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_bridge_port();
        let child = Command::new("redis-server")
            .args(["--bind", BRIDGE, "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (tests/setup.sh installs it)");
        let r = Redis { child, port };
        for _ in 0..100 {
            if r.cli(&["PING"]).trim() == "PONG" {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not answer on {BRIDGE}:{port}");
    }

    pub fn url(&self) -> String {
        format!("redis://{BRIDGE}:{}/0", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", BRIDGE, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a browser login should end with.
pub enum Expect<'a> {
    /// The protected page, showing this text.
    Page(&'a str),
    /// A refusal with this status, naming this text.
    Refused(u16, &'a str),
}

/// Signs in as `user` at `url` in headless Chromium (tests/browser/login.mjs), reaching only
/// loopback and `hosts`, and trusting any certificate (the IdP's is the test CA's). Returns
/// the script's result: `status`, `finalUrl`, `body` (the final page's text), `steps`.
pub async fn browser_login(url: &str, user: &str, hosts: &[&str], expect: Expect<'_>) -> Value {
    let (text, status) = match expect {
        Expect::Page(t) => (t, None),
        Expect::Refused(s, t) => (t, Some(s)),
    };
    let mut cmd = Command::new("timeout");
    cmd.args(["90", "node"])
        .arg(Path::new(REPO).join("tests/browser/login.mjs"))
        .args([url, user, &format!("{user}-password"), text])
        .env("SIDEKEY_BROWSER_HOSTS", hosts.join(","))
        .env("SIDEKEY_BROWSER_IGNORE_CERTS", "1")
        .current_dir(REPO);
    if let Some(s) = status {
        cmd.env("SIDEKEY_EXPECT_STATUS", s.to_string());
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("node runs tests/browser/login.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result from login.mjs: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success() && result["ok"] == true,
        "browser login of {user} at {url} failed: {result:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result
}

/// The claims of a JWT (unverified).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims json")
}
