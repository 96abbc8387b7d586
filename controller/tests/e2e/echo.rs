//! The echo app (`sidekey-echo`) each scenario protects, and the waits on it: its pods rolled
//! out with or without the sidecar, its policy Ready, its own answer through the Service.
//! Also the host IdP set up for a client-secret policy, which more than one scenario uses.

use std::time::Duration;

use serde_json::{Value, json};

use crate::host::{Idp, TestCa};
use crate::support::{Rig, TestNamespace, apply, current_condition, get_json, http_get, kubectl, kubectl_ok, wait_or_explain};

pub const WAIT: Duration = Duration::from_secs(120);
pub const REPLICAS: usize = 2;
pub const CLIENT: &str = "e2e-echo";

/// One scenario at a time: they share two cores, the node and the controller.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The echo app (`sidekey-echo`, built and loaded by with-node.sh) as seed-001 has it: a
/// ServiceAccount, a Deployment whose container port is named `http`, a Service whose
/// targetPort names it, and an HTTPRoute WITHOUT hostnames, so the proxy derives the
/// callback from each request's Host (here the ClusterIP).
pub fn echo_app_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{ name: {name} }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name} }}
spec:
  replicas: {REPLICAS}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      serviceAccountName: {name}
      securityContext: {{ runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532 }}
      containers:
      - name: app
        image: sidekey.test/echo:e2e
        imagePullPolicy: Never
        ports: [{{ name: http, containerPort: 8080 }}]
        readinessProbe: {{ httpGet: {{ path: /healthz, port: http }}, periodSeconds: 1 }}
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
  rules:
  - backendRefs: [{{ name: {name}, port: 80 }}]
"#
    )
}

pub fn cluster_ip(rig: &Rig, ns: &str, svc: &str) -> String {
    let s = get_json(rig, ns, &format!("service/{svc}")).expect("service");
    s["spec"]["clusterIP"].as_str().expect("clusterIP").to_string()
}

pub fn pods(rig: &Rig, ns: &str, app: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&kubectl_ok(
        rig,
        &["-n", ns, "get", "pods", "-l", &format!("app={app}"), "-o", "json"],
        None,
    ))
    .expect("json");
    list["items"].as_array().cloned().unwrap_or_default()
}

pub fn sidecar(pod: &Value) -> Option<&Value> {
    pod["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "sidekey-proxy")
}

/// `Ok` when exactly the app's replicas run, each Running with every container ready (the
/// kubectl READY column: 2/2 with the native sidecar, 1/1 without), none on its way out,
/// and with (or without) the sidecar.
fn rolled_out(pods: &[Value], with_sidecar: bool) -> Result<(), String> {
    let live: Vec<&Value> = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    if live.len() != pods.len() || live.len() != REPLICAS {
        return Err(format!("{} pods, {} of them live; want {REPLICAS}", pods.len(), live.len()));
    }
    for p in live {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        if p["status"]["phase"] != "Running" {
            return Err(format!("{name} is {}", p["status"]["phase"]));
        }
        let statuses: Vec<&Value> = ["initContainerStatuses", "containerStatuses"]
            .iter()
            .flat_map(|k| p["status"][k].as_array().into_iter().flatten())
            .collect();
        let ready = statuses.iter().filter(|s| s["ready"] == true).count();
        let want = if with_sidecar { 2 } else { 1 };
        if ready != want || statuses.len() != want {
            return Err(format!("{name}: {ready}/{} ready, want {want}/{want}", statuses.len()));
        }
        match (sidecar(p), with_sidecar) {
            (Some(c), true) if c["restartPolicy"] == "Always" => {}
            (Some(c), true) => return Err(format!("{name}: the sidecar is not native: {c}")),
            (None, false) => {}
            (s, _) => return Err(format!("{name}: sidecar {}", if s.is_some() { "still there" } else { "missing" })),
        }
    }
    Ok(())
}

pub async fn wait_rolled_out(rig: &Rig, ns: &str, app: &str, with_sidecar: bool) -> Vec<Value> {
    let what = format!(
        "{REPLICAS} pods of {ns}/{app} running {} the sidecar",
        if with_sidecar { "with" } else { "without" }
    );
    wait_or_explain(
        &what,
        WAIT,
        || async {
            let p = pods(rig, ns, app);
            rolled_out(&p, with_sidecar).ok().map(|_| p)
        },
        || {
            format!(
                "{:?}\n{}",
                rolled_out(&pods(rig, ns, app), with_sidecar),
                describe_pods(rig, ns, app)
            )
        },
    )
    .await
}

pub fn describe_pods(rig: &Rig, ns: &str, app: &str) -> String {
    String::from_utf8_lossy(&kubectl(rig, &["-n", ns, "describe", "pods", "-l", &format!("app={app}")]).stdout).into_owned()
}

pub async fn wait_ready(rig: &Rig, ns: &str, name: &str) -> Value {
    wait_or_explain(
        &format!("{ns}/{name} Ready=True"),
        WAIT,
        || async {
            let p = get_json(rig, ns, &format!("authpolicy/{name}"))?;
            let (s, r) = current_condition(&p, "Ready")?;
            (s == "True" && r == "Ready").then_some(p)
        },
        || {
            let p = get_json(rig, ns, &format!("authpolicy/{name}")).unwrap_or_default();
            format!("policy status: {:#}\n{}", p["status"], describe_pods(rig, ns, name))
        },
    )
    .await
}

/// The app's answer through the Service when it answers directly (no proxy in the way).
pub async fn wait_app_direct(addr: &str) -> Value {
    wait_or_explain(
        &format!("the echo app itself at {addr}"),
        WAIT,
        || async {
            let r = http_get(addr, "/direct").await?;
            if r.status != 200 {
                return None;
            }
            serde_json::from_str::<Value>(&r.body).ok().filter(|v| v["app"] == "sidekey-echo")
        },
        String::new,
    )
    .await
}

/// A fresh namespace (`prefix-…`) with the echo app rolled out in it, unprotected, and its
/// Service's ClusterIP: where every scenario starts.
pub async fn echo_namespace(rig: &'static Rig, prefix: &str) -> (TestNamespace, String) {
    let ns = TestNamespace::new(rig, prefix);
    apply(rig, &ns.name, &echo_app_yaml("echo"));
    wait_rolled_out(rig, &ns.name, "echo", false).await;
    let ip = cluster_ip(rig, &ns.name, "echo");
    (ns, ip)
}

/// ConfigMap `idp-ca` in `ns` with the test CA (`ca.crt`), for a policy's `provider.caBundle`.
pub fn ca_config_map(rig: &Rig, ns: &str, ca: &TestCa) {
    let from = format!("--from-file=ca.crt={}", ca.file("ca.crt").display());
    kubectl_ok(rig, &["-n", ns, "create", "configmap", "idp-ca", &from], None);
}

/// The host's IdP with a confidential client for the app at `ip`, and in the namespace what a
/// policy needs to sign in with it: ConfigMap `idp-ca` and Secret `idp-client`.
pub struct OidcClient {
    pub idp: Idp,
    _ca: TestCa,
}

impl OidcClient {
    pub fn start(rig: &Rig, ns: &str, ip: &str) -> Self {
        let ca = TestCa::new();
        let secret = format!("{:032x}", rand::random::<u128>());
        let idp = Idp::start(
            &ca,
            &rig.state.join("pki/ca.crt"),
            json!({"clients": [{"client_id": CLIENT, "client_secret": secret, "redirect_uris": [format!("http://{ip}/oauth2/callback")], "grant_types": ["authorization_code", "refresh_token"]}]}),
        );
        ca_config_map(rig, ns, &ca);
        let from = format!("--from-literal=secret={secret}");
        kubectl_ok(rig, &["-n", ns, "create", "secret", "generic", "idp-client", &from], None);
        OidcClient { idp, _ca: ca }
    }

    /// AuthPolicy `name` on HTTPRoute `name`, signing in with this client and letting group
    /// `admins` in over plain http; `more` is further `spec` YAML, indented by two spaces.
    pub fn policy(&self, name: &str, more: &str) -> String {
        format!(
            r#"apiVersion: sidekey.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: {name} }}
spec:
  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name} }}]
  provider:
    type: oidc
    issuerURL: {issuer}
    clientID: {CLIENT}
    clientSecretRef: {{ name: idp-client, key: secret }}
    caBundle: {{ name: idp-ca, key: ca.crt }}
  access: {{ allowedGroups: [admins] }}
  sidecar:
    extraArgs: ["--cookie-secure=false"]
{more}"#,
            issuer = self.idp.issuer
        )
    }
}
