//! The real API server these tests run against, and what they need around it: the admin
//! client, `kubectl` and `helm`, one namespace per test, the controller binary as a process
//! (under the chart's ServiceAccount), and waits on conditions with a deadline.
//!
//! `tests/k8s/with-cluster.sh` starts the control plane once for the whole run and passes
//! its admin kubeconfig in `SIDEKEY_KUBECONFIG`. Without it the tests skip with one loud
//! line, except in CI, where a missing rig is a failure.
//!
//! Shared with the end-to-end tests on a real node (`controller/tests/e2e`, run through
//! `tests/e2e/with-node.sh`): each test target names its variables in `crate::RIG_ENV`.
#![allow(dead_code)] // each of the two test targets uses its own part of it

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Tests that run a controller (which watches the whole cluster) or stop the API server take
/// this for writing; tests that only talk to the API server take it for reading.
pub static CLUSTER_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub struct Rig {
    pub kubeconfig: PathBuf,
    pub state: PathBuf,
}

/// Where a test target finds its rig: the variables its wrapper script sets.
pub struct RigEnv {
    /// The admin kubeconfig.
    pub kubeconfig: &'static str,
    /// The rig's state directory (`$KUBE_STATE`).
    pub state: &'static str,
    /// What the tests are, for the skip line.
    pub what: &'static str,
    /// How to run them, for the skip line and CI's failure.
    pub how: &'static str,
    /// Fail instead of skipping when CI=true. The e2e tests leave that to their wrapper
    /// (tests/e2e/with-node.sh), since `cargo test --workspace` runs them without it.
    pub required_in_ci: bool,
}

/// The rig, or `None` (after one loud line) when the tests were not started through their
/// wrapper (`crate::RIG_ENV.how`).
pub fn rig() -> Option<&'static Rig> {
    static RIG: OnceLock<Option<Rig>> = OnceLock::new();
    let env = &crate::RIG_ENV;
    RIG.get_or_init(|| match std::env::var_os(env.kubeconfig) {
        Some(k) => Some(Rig {
            kubeconfig: k.into(),
            state: std::env::var_os(env.state).map(PathBuf::from).unwrap_or_default(),
        }),
        None if env.required_in_ci && std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI: the {} need the rig; run them through `{}` (make test does)", env.what, env.how)
        }
        None => {
            eprintln!(
                "\n*** SKIPPING the {}: run them through `{}` (needs root and the shared/kube rig beside the checkout, or SIDEKEY_KUBE_BIN) ***\n",
                env.what, env.how
            );
            None
        }
    })
    .as_ref()
}

/// Skips the calling test when there is no rig (see [`rig`]).
#[macro_export]
macro_rules! rig_or_skip {
    () => {
        match $crate::support::rig() {
            Some(r) => r,
            None => return,
        }
    };
}

/// A tool from `.tools/bin` (tests/setup.sh installs helm and kubectl there), else from PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(REPO).join(".tools/bin").join(name);
    if local.exists() { local } else { PathBuf::from(name) }
}

/// `kubectl` against the rig as admin.
pub fn kubectl(rig: &Rig, args: &[&str]) -> Output {
    kubectl_stdin(rig, args, None)
}

pub fn kubectl_stdin(rig: &Rig, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", &rig.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (make setup installs it into .tools/bin)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("kubectl")
}

/// `kubectl`, which must succeed; returns its stdout.
pub fn kubectl_ok(rig: &Rig, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_stdin(rig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart (the real helm), with `--set` values.
pub fn helm_template(release: &str, namespace: &str, sets: &[&str]) -> String {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", release, "charts/sidekey", "--namespace", namespace])
        .current_dir(REPO);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs (make setup installs it into .tools/bin)");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The AuthPolicy CRD and Gateway API's, applied once per run (server-side, as users do).
pub async fn crds_installed(rig: &'static Rig) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async move {
        let gateway = format!("{REPO}/../shared/k8s/gateway-api-v1.6.1");
        let gateway = std::env::var("SIDEKEY_GATEWAY_CRDS").unwrap_or(gateway);
        for f in [format!("{REPO}/crds/sidekey.dev_authpolicies.yaml"), gateway] {
            kubectl_ok(rig, &["apply", "--server-side", "-f", &f], None);
        }
        for crd in [
            "authpolicies.sidekey.dev",
            "httproutes.gateway.networking.k8s.io",
            "referencegrants.gateway.networking.k8s.io",
        ] {
            kubectl_ok(
                rig,
                &["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{crd}")],
                None,
            );
        }
    })
    .await;
}

/// A namespace of its own for one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
    rig: &'static Rig,
}

impl TestNamespace {
    pub fn new(rig: &'static Rig, prefix: &str) -> Self {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        kubectl_ok(rig, &["create", "namespace", &name], None);
        TestNamespace { name, rig }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Our finalizer would hold a policy left by a failed test: drop it so the namespace goes.
        let _ = kubectl(
            self.rig,
            &[
                "-n",
                &self.name,
                "patch",
                "authpolicies",
                "--all",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        );
        let _ = kubectl(self.rig, &["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics naming `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_or_explain(what, limit, check, String::new).await
}

/// [`wait_for`], with `explain()` (the state the test saw last) in the timeout's message.
pub async fn wait_or_explain<T, F, Fut>(what: &str, limit: Duration, mut check: F, explain: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}\n{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An object as JSON (`kubectl get -o json`), or `None` when it does not exist.
pub fn get_json(rig: &Rig, namespace: &str, what: &str) -> Option<Value> {
    let out = kubectl(rig, &["-n", namespace, "get", what, "-o", "json"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound") || err.contains("not found"), "kubectl get {what}: {err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

pub fn condition<'a>(policy: &'a Value, type_: &str) -> Option<&'a Value> {
    policy["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// `(status, reason)` of a condition of a policy, when the controller has observed the
/// policy's current generation.
pub fn current_condition(policy: &Value, type_: &str) -> Option<(String, String)> {
    if policy["status"]["observedGeneration"] != policy["metadata"]["generation"] {
        return None;
    }
    let c = condition(policy, type_)?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A kubeconfig that authenticates as a ServiceAccount with a fresh token (TokenRequest),
/// written into `dir`.
pub fn service_account_kubeconfig(rig: &Rig, namespace: &str, sa: &str, dir: &Path) -> PathBuf {
    let token = kubectl_ok(rig, &["-n", namespace, "create", "token", sa, "--duration=2h"], None);
    let admin: Value = serde_json::to_value(
        serde_saphyr::from_str::<serde_json::Value>(&std::fs::read_to_string(&rig.kubeconfig).expect("kubeconfig"))
            .expect("kubeconfig yaml"),
    )
    .expect("json");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rig", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "rig", "context": {"cluster": "rig", "user": sa, "namespace": namespace}}],
        "current-context": "rig",
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&config).expect("json")).expect("write kubeconfig");
    path
}

/// The controller binary, running as a process against the rig.
pub struct ControllerProcess {
    pub identity: String,
    pub child: Child,
    pub metrics: u16,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn start(kubeconfig: &Path, lease_namespace: &str, identity: &str, dir: &Path) -> Self {
        let metrics = free_port();
        // Kept after the run (the test's own folder goes): the first thing to read when one fails.
        let logs = std::env::temp_dir().join("sidekey-kube-real-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("{identity}-{}.log", dir.file_name().unwrap_or_default().to_string_lossy()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sidekey-controller"))
            .args([
                "--metrics-address",
                &format!("127.0.0.1:{metrics}"),
                "--lease-namespace",
                lease_namespace,
                "--proxy-image",
                "sidekey.test/sidekey-proxy:dev",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env(
                "RUST_LOG",
                std::env::var("SIDEKEY_TEST_CONTROLLER_LOG").unwrap_or_else(|_| "info,kube=warn,sidekey_controller=debug".into()),
            )
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("sidekey-controller starts");
        ControllerProcess {
            identity: identity.into(),
            child,
            metrics,
            log,
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then how long the process took to exit and how (`None`: still running after
    /// `limit`).
    pub async fn terminate(&mut self, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
        let sent = Instant::now();
        unsafe_kill(self.child.id(), "TERM");
        while sent.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((sent.elapsed(), status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics` (or `/readyz`...): status and body, `None` while nothing listens.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = http_get(&format!("127.0.0.1:{}", self.metrics), path).await?;
        Some((r.status, r.body))
    }

    /// The API writes this process sent, as `kind/verb` → count (its `/metrics`).
    pub async fn writes(&self) -> std::collections::BTreeMap<String, u64> {
        let (_, body) = self.get("/metrics").await.unwrap_or_default();
        parse_writes(&body)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of controller {} ---", self.identity);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A plain HTTP/1.1 response: the status, the head (status line and headers) and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` from `addr` (`host:port`) over plain HTTP/1.1, `Connection: close`, 10 s at
/// most; `None` while nothing answers. Bodies are read to the end (no chunked decoding).
pub async fn http_get(addr: &str, path: &str) -> Option<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange).await.ok()??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn parse_writes(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    let re = regex::Regex::new(r#"^sidekey_controller_api_writes_total\{kind="([^"]+)",verb="([^"]+)"\} (\d+)"#).expect("re");
    metrics
        .lines()
        .filter_map(|l| re.captures(l))
        .map(|c| (format!("{}/{}", &c[1], &c[2]), c[3].parse().expect("count")))
        .collect()
}

/// The seed-001-shaped app: a ServiceAccount, a Deployment whose container port is named
/// `http`, a Service whose targetPort names it, and an HTTPRoute to the Service.
pub fn app_yaml(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{ name: {name} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name} }}
spec:
  replicas: {replicas}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      serviceAccountName: {name}
      containers:
      - name: app
        image: sidekey.test/app:dev
        imagePullPolicy: Never
        ports: [{{ name: http, containerPort: 8080 }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: {name} }}
spec:
  selector: {{ app: {name} }}
  ports: [{{ name: http, port: 80, targetPort: http }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {name} }}
spec:
  parentRefs: [{{ name: gw, namespace: infra }}]
  hostnames: [{name}.example.com]
  rules:
  - backendRefs: [{{ name: {name}, port: 80 }}]
"#
    )
}

/// An Entra ID policy with workload identity on the HTTPRoute `route`.
pub fn policy_yaml(name: &str, route: &str, group: &str) -> String {
    format!(
        r#"apiVersion: sidekey.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: {name} }}
spec:
  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route} }}]
  provider:
    type: entra-id
    issuerURL: https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0
    clientID: 00000000-0000-0000-0000-000000000000
    workloadIdentity: {{}}
  access: {{ allowedGroups: [{group}] }}
"#
    )
}

pub fn apply(rig: &Rig, namespace: &str, yaml: &str) {
    kubectl_ok(
        rig,
        &["-n", namespace, "apply", "--server-side", "--field-manager=test-user", "-f", "-"],
        Some(yaml),
    );
}

/// The API server's process as the rig started it, so a test can stop and restart it.
pub struct ApiServerProcess {
    pid_file: PathBuf,
    argv: Vec<String>,
    log: PathBuf,
}

static APISERVER: LazyLock<std::sync::Mutex<()>> = LazyLock::new(Default::default);

impl ApiServerProcess {
    pub fn of(rig: &Rig) -> Self {
        let pid_file = rig.state.join("run/kube-apiserver.pid");
        let pid = read_pid(&pid_file);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver cmdline");
        let argv = argv
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        ApiServerProcess {
            pid_file,
            argv,
            log: rig.state.join("logs/kube-apiserver.log"),
        }
    }

    /// SIGTERM, then SIGKILL after 3 s (as the rig's `down` does); returns once it is gone.
    pub fn stop(&self) {
        let _guard = APISERVER.lock().unwrap_or_else(|e| e.into_inner());
        let pid = read_pid(&self.pid_file);
        let gone = || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        unsafe_kill(pid, "TERM");
        let start = Instant::now();
        while !gone() && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !gone() {
            unsafe_kill(pid, "KILL");
            while !gone() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts it again with the same command line, in its own session, logging where the rig
    /// does, and records its PID where the rig's `down` will find it.
    pub fn start(&self) {
        let _guard = APISERVER.lock().unwrap_or_else(|e| e.into_inner());
        let log = std::fs::OpenOptions::new().append(true).create(true).open(&self.log).expect("log");
        let child = Command::new("setsid")
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("kube-apiserver restarts");
        // setsid execs the server in place: the child's PID is the server's.
        let pid = child.id();
        std::mem::forget(child);
        let start_ticks = loop {
            if let Some(t) = proc_start_ticks(pid)
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("kube-apiserver"))
            {
                break t;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::fs::write(&self.pid_file, format!("{pid} {start_ticks}\n")).expect("pid file");
    }
}

fn read_pid(pid_file: &Path) -> u32 {
    std::fs::read_to_string(pid_file)
        .expect("apiserver pid file")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid")
}

fn proc_start_ticks(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    // Field 22 of stat is the 20th after "pid (comm) ".
    rest.split_whitespace().nth(19).map(str::to_string)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status();
}
