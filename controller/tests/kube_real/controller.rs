//! The controller binary against the real API server, authenticated as the chart's own
//! ServiceAccount (the chart's RBAC, rendered by the real helm): a policy's whole life, two
//! replicas with leader election, and an API server that goes away mid-rollout.
//!
//! There is no node, so no pod runs: the real kube-controller-manager finishes a rollout
//! when the test scales the Deployment to 0, which is when the Service may be switched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    self, ApiServerProcess, ControllerProcess, Rig, TestNamespace, apply, current_condition, get_json, kubectl, kubectl_ok, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

/// The chart's ServiceAccount and RBAC (release `release`, in `namespace`) applied to the
/// rig; returns a kubeconfig holding a token of that ServiceAccount.
fn chart_identity(rig: &Rig, namespace: &str, release: &str, dir: &Path) -> (PathBuf, String) {
    let rendered = support::helm_template(release, namespace, &[]);
    let docs: Vec<&str> = rendered
        .split("\n---")
        .filter(|d| {
            [
                "kind: ServiceAccount",
                "kind: ClusterRole",
                "kind: ClusterRoleBinding",
                "kind: Role",
                "kind: RoleBinding",
            ]
            .iter()
            .any(|k| d.lines().any(|l| l.trim() == *k))
        })
        .collect();
    assert!(docs.len() >= 5, "chart RBAC not found in:\n{rendered}");
    kubectl_ok(
        rig,
        &["-n", namespace, "apply", "--server-side", "-f", "-"],
        Some(&docs.join("\n---")),
    );
    let sa = docs
        .iter()
        .find(|d| d.lines().any(|l| l.trim() == "kind: ServiceAccount"))
        .and_then(|d| d.lines().find_map(|l| l.trim().strip_prefix("name: ")))
        .expect("ServiceAccount name")
        .trim()
        .to_string();
    (support::service_account_kubeconfig(rig, namespace, &sa, dir), sa)
}

/// Removes the cluster-scoped RBAC objects of a release.
fn drop_cluster_rbac(rig: &Rig, release: &str) {
    let _ = kubectl(
        rig,
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "--wait=false",
        ],
    );
}

/// What each controller test starts from: the cluster to itself (controllers watch every
/// namespace), its own namespace, and the chart's ServiceAccount and RBAC for the
/// controller. The release's cluster-wide RBAC goes when the scene does.
struct Scene {
    rig: &'static Rig,
    ns: TestNamespace,
    dir: tempfile::TempDir,
    release: String,
    kubeconfig: PathBuf,
    sa: String,
    _exclusive: tokio::sync::RwLockWriteGuard<'static, ()>,
}

impl Scene {
    async fn new(prefix: &str) -> Option<Scene> {
        let rig = support::rig()?;
        let exclusive = support::CLUSTER_LOCK.write().await;
        support::crds_installed(rig).await;
        let ns = TestNamespace::new(rig, prefix);
        let dir = tempfile::tempdir().unwrap();
        let release = format!("sk-{}", ns.name);
        let (kubeconfig, sa) = chart_identity(rig, &ns.name, &release, dir.path());
        Some(Scene {
            rig,
            ns,
            dir,
            release,
            kubeconfig,
            sa,
            _exclusive: exclusive,
        })
    }

    fn controller(&self, identity: &str) -> ControllerProcess {
        ControllerProcess::start(&self.kubeconfig, &self.ns.name, identity, self.dir.path())
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        drop_cluster_rbac(self.rig, &self.release);
    }
}

/// Every request the API server audited for `user`, as `(verb, uri, code)`.
fn audited(user: &str) -> Vec<(String, String, i64)> {
    let path = std::env::var("SIDEKEY_AUDIT_LOG").expect("with-cluster.sh turns on the API server's audit log");
    let text = std::fs::read_to_string(&path).expect("audit log");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete")
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                e["requestURI"].as_str().unwrap_or_default().to_string(),
                e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

async fn policy(rig: &Rig, ns: &str, name: &str) -> Option<Value> {
    get_json(rig, ns, &format!("authpolicy/{name}"))
}

async fn wait_condition(rig: &Rig, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> Value {
    support::wait_or_explain(
        &format!("{ns}/{name} {type_}={status} {reason}"),
        WAIT,
        || async {
            let p = policy(rig, ns, name).await?;
            let (s, r) = current_condition(&p, type_)?;
            (s == status && r == reason).then_some(p)
        },
        || {
            let p = get_json(rig, ns, &format!("authpolicy/{name}")).unwrap_or_default();
            let d = get_json(rig, ns, "deployments").unwrap_or_default();
            let statuses: Vec<_> = d["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        &d["metadata"]["name"],
                        &d["metadata"]["generation"],
                        &d["spec"]["replicas"],
                        &d["status"],
                    )
                })
                .collect();
            format!(
                "policy: {:#}\ndeployments (name, generation, replicas, status): {statuses:#?}",
                p["status"]
            )
        },
    )
    .await
}

fn deployment(rig: &Rig, ns: &str, name: &str) -> Value {
    get_json(rig, ns, &format!("deployment/{name}")).expect("deployment")
}

fn sidecar(d: &Value) -> Option<&Value> {
    d["spec"]["template"]["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "sidekey-proxy")
}

fn token_volume(d: &Value) -> Option<&Value> {
    d["spec"]["template"]["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == "sidekey-token")
}

fn target_port(rig: &Rig, ns: &str, svc: &str) -> String {
    let s = get_json(rig, ns, &format!("service/{svc}")).expect("service");
    match &s["spec"]["ports"][0]["targetPort"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn scale(rig: &Rig, ns: &str, name: &str, replicas: u32) {
    kubectl_ok(
        rig,
        &["-n", ns, "scale", &format!("deployment/{name}"), &format!("--replicas={replicas}")],
        None,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_lifecycle_under_the_charts_service_account() {
    let Some(scene) = Scene::new("life").await else { return };
    let (rig, n, sa) = (scene.rig, scene.ns.name.as_str(), scene.sa.as_str());
    let mut controller = scene.controller("life-a");

    // The app, one replica: with no node it never becomes available, so the rollout that
    // brings the sidecar stays pending until the test scales it down.
    apply(rig, n, &support::app_yaml("hello", 1));
    apply(rig, n, &support::policy_yaml("hello", "hello", "g1"));

    let injected = wait_for("the sidecar in the Deployment", WAIT, || async {
        let d = deployment(rig, n, "hello");
        (sidecar(&d).is_some() && token_volume(&d).is_some()).then_some(d)
    })
    .await;
    let proxy = sidecar(&injected).unwrap();
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar: {proxy:#}");
    let projected = &token_volume(&injected).unwrap()["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projected["audience"], "api://AzureADTokenExchange");
    assert_eq!(projected["expirationSeconds"], 3600);
    let p = wait_condition(rig, n, "hello", "Ready", "False", "RolloutPending").await;
    assert_eq!(target_port(rig, n, "hello"), "http", "switched before the sidecar runs: {p:#}");
    assert_eq!(
        p["status"]["workloadIdentity"]["subjects"][0],
        format!("system:serviceaccount:{n}:hello")
    );
    // The issuer to register is the cluster's own, read from its discovery document.
    assert_eq!(p["status"]["workloadIdentity"]["issuer"], issuer(rig), "{:#}", p["status"]);

    // The real deployment controller reports the (now empty) rollout complete.
    scale(rig, n, "hello", 0);
    let p = wait_condition(rig, n, "hello", "Ready", "True", "Ready").await;
    assert_eq!(p["status"]["protected"], 1);
    assert_eq!(target_port(rig, n, "hello"), "sidekey-http");
    let secret = get_json(rig, n, "secret/hello-sidekey-cookie").expect("generated cookie Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "AuthPolicy");

    // An edit reaches the sidecar's arguments and is observed.
    apply(rig, n, &support::policy_yaml("hello", "hello", "g2"));
    wait_for("the edited policy in the sidecar", WAIT, || async {
        let d = deployment(rig, n, "hello");
        sidecar(&d)?.to_string().contains("--allowed-group=g2").then_some(())
    })
    .await;
    wait_condition(rig, n, "hello", "Ready", "True", "Ready").await;

    // A second policy on the same Service loses to the older one.
    apply(rig, n, &support::policy_yaml("second", "hello", "g3"));
    wait_condition(rig, n, "second", "Accepted", "False", "Conflicted").await;
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/second", "--timeout=60s"], None);
    assert!(sidecar(&deployment(rig, n, "hello")).unwrap().to_string().contains("g2"));

    // Delete: everything is put back, and the finalizer lets the policy go.
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/hello", "--timeout=60s"], None);
    let d = deployment(rig, n, "hello");
    assert!(
        sidecar(&d).is_none() && token_volume(&d).is_none(),
        "not released: {:#}",
        d["spec"]["template"]
    );
    assert_eq!(target_port(rig, n, "hello"), "http");
    let svc = get_json(rig, n, "service/hello").unwrap();
    assert!(
        !svc["metadata"]["annotations"].to_string().contains("sidekey.dev/"),
        "our annotations are left: {:#}",
        svc["metadata"]
    );
    // The real garbage collector removes the Secret the policy owned.
    wait_for("the cookie Secret garbage-collected", WAIT, || async {
        get_json(rig, n, "secret/hello-sidekey-cookie").is_none().then_some(())
    })
    .await;
    assert!(controller.alive(), "the controller exited:\n{}", controller.log_text());

    // Least privilege that suffices: the server answered no request of ours with 403.
    let user = format!("system:serviceaccount:{n}:{sa}");
    let requests = audited(&user);
    assert!(requests.len() > 20, "audit log has {} requests of {user}", requests.len());
    let denied: Vec<_> = requests.iter().filter(|r| r.2 == 403).collect();
    assert!(denied.is_empty(), "forbidden under the chart's RBAC: {denied:#?}");
    controller.kill();
}

fn issuer(rig: &Rig) -> String {
    let doc = kubectl_ok(rig, &["get", "--raw", "/.well-known/openid-configuration"], None);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    doc["issuer"].as_str().unwrap().to_string()
}

fn lease_holder(rig: &Rig, ns: &str) -> Option<String> {
    let l = get_json(rig, ns, "lease/sidekey-controller")?;
    l["spec"]["holderIdentity"].as_str().map(str::to_string)
}

fn writes_total(w: &std::collections::BTreeMap<String, u64>) -> u64 {
    w.values().sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_only_the_lease_holder_writes_and_the_other_takes_over() {
    let Some(scene) = Scene::new("lease").await else { return };
    let (rig, n) = (scene.rig, scene.ns.name.as_str());
    let mut a = scene.controller("replica-a");
    let first = wait_for("a Lease holder", WAIT, || async { lease_holder(rig, n) }).await;
    assert_eq!(first, "replica-a");
    let mut b = scene.controller("replica-b");
    wait_for("replica-b standing by (ready)", WAIT, || async {
        let (code, body) = b.get("/readyz").await?;
        (code == 200 && body.contains("standby")).then_some(())
    })
    .await;

    apply(rig, n, &support::app_yaml("app", 0));
    apply(rig, n, &support::policy_yaml("app", "app", "g1"));
    wait_condition(rig, n, "app", "Ready", "True", "Ready").await;
    assert!(writes_total(&a.writes().await) >= 4, "the leader wrote: {:?}", a.writes().await);
    assert_eq!(writes_total(&b.writes().await), 0, "the standby wrote: {:?}", b.writes().await);

    // The leader dies without a word; the standby takes over once the Lease runs out.
    a.kill();
    let killed = Instant::now();
    wait_for("replica-b holding the Lease", WAIT, || async {
        (lease_holder(rig, n).as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("lease takeover after SIGKILL of the leader: {takeover:?}");
    // 15 s lease, a standby that retries every 2 s.
    assert!(takeover <= Duration::from_secs(17), "takeover took {takeover:?}");

    // The new leader's first look at the protected app must change nothing: no release of
    // the sidecar, no Service switched back to the app port (once seen on every failover).
    let generation = deployment(rig, n, "app")["metadata"]["generation"].clone();
    wait_for("the new leader reconciling the policy", WAIT, || async {
        let (_, metrics) = b.get("/metrics").await?;
        let ok = metrics
            .lines()
            .find(|l| l.starts_with("sidekey_controller_reconciles_total{result=\"ok\"}"))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()?;
        (ok >= 1).then_some(())
    })
    .await;
    let writes = b.writes().await;
    for kind in ["Deployment/apply", "Service/apply", "Deployment/patch"] {
        assert_eq!(writes.get(kind), None, "the new leader wrote {kind} on takeover: {writes:?}");
    }
    assert_eq!(deployment(rig, n, "app")["metadata"]["generation"], generation);
    assert_eq!(target_port(rig, n, "app"), "sidekey-http");

    apply(rig, n, &support::policy_yaml("app", "app", "g2"));
    wait_for("the new leader applying the edit", WAIT, || async {
        let d = deployment(rig, n, "app");
        sidecar(&d)?.to_string().contains("--allowed-group=g2").then_some(())
    })
    .await;
    wait_condition(rig, n, "app", "Ready", "True", "Ready").await;
    assert!(writes_total(&b.writes().await) > 0);
    assert!(b.alive(), "replica-b exited:\n{}", b.log_text());
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/app", "--timeout=60s"], None);

    // SIGTERM in both roles: a standby stops at once (it used to wait out the grace period
    // for SIGKILL), and the leader hands the Lease over before it exits.
    let mut c = scene.controller("replica-c");
    wait_for("replica-c standing by", WAIT, || async {
        let (code, body) = c.get("/readyz").await?;
        (code == 200 && body.contains("standby")).then_some(())
    })
    .await;
    let (took, status) = c.terminate(Duration::from_secs(10)).await.expect("the standby exits on SIGTERM");
    eprintln!("standby exited {took:?} after SIGTERM");
    assert!(status.success() && took < Duration::from_secs(3), "{status:?} after {took:?}");
    let (took, status) = b.terminate(Duration::from_secs(20)).await.expect("the leader exits on SIGTERM");
    eprintln!("leader exited {took:?} after SIGTERM");
    assert!(status.success() && took < Duration::from_secs(5), "{status:?} after {took:?}");
    assert_eq!(lease_holder(rig, n), None, "the Lease is released, not left to expire");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_away_for_10s_mid_rollout_converges_without_a_crash_or_a_second_write() {
    let Some(scene) = Scene::new("outage").await else { return };
    let (rig, n) = (scene.rig, scene.ns.name.as_str());
    let mut c = scene.controller("outage-a");

    apply(rig, n, &support::app_yaml("app", 1));
    apply(rig, n, &support::policy_yaml("app", "app", "g1"));
    wait_condition(rig, n, "app", "Ready", "False", "RolloutPending").await;
    let before = c.writes().await;
    assert_eq!(before.get("Deployment/apply"), Some(&1), "{before:?}");

    let apiserver = ApiServerProcess::of(rig);
    apiserver.stop();
    let down = Instant::now();
    // The controller stays up while the server is away (its watches and Lease renewals fail).
    while down.elapsed() < Duration::from_secs(10) {
        assert!(c.alive(), "the controller exited while the API server was away:\n{}", c.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    apiserver.start();
    wait_for("the API server ready again", WAIT, || async {
        kubectl(rig, &["get", "--raw", "/readyz"]).status.success().then_some(())
    })
    .await;

    let back = Instant::now();
    scale(rig, n, "app", 0);
    wait_for("kube-controller-manager reporting the rollout", WAIT, || async {
        let d = deployment(rig, n, "app");
        let done = d["status"]["observedGeneration"] == d["metadata"]["generation"] && d["status"]["replicas"].as_i64().unwrap_or(0) == 0;
        done.then_some(())
    })
    .await;
    let rolled_out = back.elapsed();
    wait_condition(rig, n, "app", "Ready", "True", "Ready").await;
    eprintln!(
        "after the API server was back: rollout reported by kube-controller-manager at {rolled_out:?}, policy Ready at {:?}",
        back.elapsed()
    );
    assert_eq!(target_port(rig, n, "app"), "sidekey-http");
    assert!(c.alive(), "the controller exited:\n{}", c.log_text());
    let after = c.writes().await;
    // One apply of the sidecar, one switch of the Service, one cookie Secret: nothing twice.
    for (what, want) in [("Deployment/apply", 1), ("Service/apply", 1), ("Secret/create", 1)] {
        assert_eq!(after.get(what), Some(&want), "{what}: {after:?}");
    }
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/app", "--timeout=60s"], None);
    c.kill();
}
