//! The controller as the chart runs it: two Pods, one holding the Lease.
//!
//! Failover, with anonymous requests going through the protected Service's ClusterIP the
//! whole time: the leader frozen (a hung process or a partitioned node: the standby takes
//! the Lease, then the old leader wakes), killed (the kubelet restarts it) and deleted
//! (SIGTERM hands the Lease over), the standby deleted, and the API server stopped for 10 s
//! and started again. Not one request may reach the app, and the controller may not write
//! to the app's Deployment, Service or Secret meanwhile (the API server's audit log says what
//! it wrote): a failover changes nothing. The times each takeover took are printed
//! (`e2e: failover`).
//!
//! And a CRD that comes after the controller (a reinstall after a failed install): the
//! leader says so once and in `/readyz`, and starts when the CRD appears, without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::echo::{OidcClient, SERIAL, WAIT, echo_namespace, wait_ready, wait_rolled_out};
use crate::support::{self, ApiServerProcess, Rig, TestNamespace, apply, get_json, http_get, kubectl, wait_for, wait_or_explain};

/// Anonymous requests through the Service, one every 20 ms, counted by what answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    /// The proxy's answers: a sign-in redirect or page.
    protected: u64,
    /// The app's own answers, with when they came: each one an anonymous user let in.
    exposed: Vec<(Duration, String)>,
    /// Anything else, by status.
    other: BTreeMap<u16, u64>,
    /// No answer (refused, reset, or nothing in 10 s).
    failed: u64,
}

impl Traffic {
    fn start(addr: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tally = Tally::default();
            while !stopped.load(Ordering::Relaxed) {
                match http_get(&addr, "/failover").await {
                    Some(r) if r.body.contains("sidekey-echo") => tally.exposed.push((started.elapsed(), r.head)),
                    Some(r) if matches!(r.status, 302 | 401 | 403) => tally.protected += 1,
                    Some(r) => *tally.other.entry(r.status).or_default() += 1,
                    None => tally.failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally
        });
        Traffic { stop, task }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the traffic task")
    }
}

/// The chart's release namespace (tests/e2e/with-node.sh installs it there).
fn controller_ns() -> String {
    std::env::var("SIDEKEY_E2E_NAMESPACE").expect("SIDEKEY_E2E_NAMESPACE (tests/e2e/with-node.sh sets it)")
}

/// `kubectl get -o json`, or `None` for any failure: the API server may be away.
fn try_get(rig: &Rig, ns: &str, what: &str) -> Option<Value> {
    let out = kubectl(rig, &["-n", ns, "get", what, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The leader Lease's holder and last renewal.
fn lease(rig: &Rig) -> Option<(String, jiff::Timestamp)> {
    let l = try_get(rig, &controller_ns(), "lease/sidekey-controller")?;
    let holder = l["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty())?;
    let renewed = l["spec"]["renewTime"].as_str()?.parse().ok()?;
    Some((holder.to_string(), renewed))
}

/// The controller's Pods by name: (IP, Ready, terminating).
fn controller_pods(rig: &Rig) -> BTreeMap<String, (String, bool, bool)> {
    let Some(list) = try_get(rig, &controller_ns(), "pods") else {
        return BTreeMap::new();
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "sidekey")
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
            (name, (ip, ready, !p["metadata"]["deletionTimestamp"].is_null()))
        })
        .collect()
}

/// Two controller Pods Ready (the leader and a standby), none on its way out.
async fn wait_two_controllers(rig: &Rig, what: &str) {
    wait_or_explain(
        what,
        WAIT,
        || async {
            let pods = controller_pods(rig);
            (pods.len() == 2 && pods.values().all(|(_, ready, going)| *ready && !going)).then_some(())
        },
        || format!("{:#?}", controller_pods(rig)),
    )
    .await;
}

/// The host PID of the controller process in Pod `pod` (its container's process, found by
/// the `POD_NAME` the chart gives it).
fn process_of(pod: &str) -> u32 {
    let want = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let is_controller = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sidekey-controller"));
        if is_controller
            && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        {
            return pid;
        }
    }
    panic!("no sidekey-controller process of pod {pod} on this host")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

/// How many reconciles the controller in the Pod at `ip` has finished (its `/metrics`).
async fn reconciles(ip: &str) -> Option<u64> {
    let r = http_get(&format!("{ip}:8080"), "/metrics").await?;
    r.body
        .lines()
        .find(|l| l.starts_with("sidekey_controller_reconciles_total{result=\"ok\"}"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Waits for a Lease holder that `taken` accepts and for that holder's first reconcile;
/// returns it with the times from `since` to each.
async fn wait_leader(rig: &Rig, what: &str, since: Instant, taken: impl Fn(&str, jiff::Timestamp) -> bool) -> (String, Duration, Duration) {
    let holder = wait_or_explain(
        what,
        WAIT,
        || async { lease(rig).filter(|(h, t)| taken(h, *t)).map(|(h, _)| h) },
        || format!("Lease: {:?}; pods {:#?}", lease(rig), controller_pods(rig)),
    )
    .await;
    let leased = since.elapsed();
    wait_or_explain(
        &format!("the new leader {holder} reconciling"),
        WAIT,
        || async {
            let ip = controller_pods(rig).get(&holder)?.0.clone();
            reconciles(&ip).await.filter(|n| *n >= 1)
        },
        || format!("pods {:#?}", controller_pods(rig)),
    )
    .await;
    (holder, leased, since.elapsed())
}

/// The writes the controller's ServiceAccount made to the app's objects in `ns`, as
/// "verb resource/name (code)", from the audit log's lines after byte `from`.
fn writes_to_the_app(rig: &Rig, ns: &str, from: u64) -> Vec<String> {
    let cns = controller_ns();
    let sa = try_get(rig, &cns, "deployment/sidekey-controller")
        .and_then(|d| d["spec"]["template"]["spec"]["serviceAccountName"].as_str().map(str::to_string))
        .expect("the controller's ServiceAccount");
    let user = format!("system:serviceaccount:{cns}:{sa}");
    let log = std::fs::read(audit_log(rig)).expect("the audit log");
    String::from_utf8_lossy(&log[from as usize..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user.as_str() && e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["namespace"] == ns)
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete")))
        .filter(|e| matches!(e["objectRef"]["resource"].as_str(), Some("deployments" | "services" | "secrets")))
        .map(|e| {
            format!(
                "{} {} {}/{} ({})",
                e["stageTimestamp"].as_str().unwrap_or_default(),
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["responseStatus"]["code"]
            )
        })
        .collect()
}

/// Tells tests/e2e/with-node.sh that requests refused (403) between `from` and `to` were the
/// API server's doing, not a gap in the chart's RBAC.
fn excuse_refusals(rig: &Rig, from: jiff::Timestamp, to: jiff::Timestamp, why: &str) {
    use std::io::Write;
    let mut path = audit_log(rig);
    path.set_file_name("excused");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("the excused file");
    writeln!(f, "{from} {to} {why}").expect("write the excused file");
}

/// tests/e2e/with-node.sh has the API server audit every ServiceAccount's requests here.
fn audit_log(rig: &Rig) -> std::path::PathBuf {
    let mut p = rig.state.clone().into_os_string();
    p.push("-audit/audit.log");
    p.into()
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_an_api_server_restart_never_expose_the_app() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let (ns, ip) = echo_namespace(rig, "failover").await;
    let n = ns.name.as_str();
    let client = OidcClient::start(rig, n, &ip);
    apply(rig, n, &client.policy("echo", ""));
    wait_ready(rig, n, "echo").await;
    wait_rolled_out(rig, n, "echo", true).await;
    wait_two_controllers(rig, "two controller Pods Ready").await;

    let addr = format!("{ip}:80");
    wait_or_explain(
        "the proxy answering through the ClusterIP",
        Duration::from_secs(20),
        || async { http_get(&addr, "/").await.filter(|r| matches!(r.status, 302 | 401 | 403)) },
        String::new,
    )
    .await;
    let deployment = get_json(rig, n, "deployment/echo").expect("deployment");
    let generation = deployment["metadata"]["generation"].clone();
    let audit_from = std::fs::metadata(audit_log(rig)).expect("the audit log").len();
    let traffic = Traffic::start(addr.clone());
    let mut report = Vec::new();

    // 1. The leader freezes (SIGSTOP: a hung process, or its node cut off). The standby takes
    // the Lease once it expires; the old leader, woken, must step down without a write.
    let (leader, _) = lease(rig).expect("a leader");
    let pid = process_of(&leader);
    signal(pid, "STOP");
    let frozen = Instant::now();
    let (next, leased, working) = wait_leader(rig, "the standby taking the Lease from the frozen leader", frozen, |h, _| {
        h != leader
    })
    .await;
    report.push(format!(
        "frozen leader → standby holds the Lease {leased:.1?}, reconciles {working:.1?}"
    ));
    signal(pid, "CONT");
    wait_or_explain(
        "the woken leader exiting",
        WAIT,
        || async { (!alive(pid)).then_some(()) },
        String::new,
    )
    .await;
    wait_two_controllers(rig, "the woken leader back as a standby").await;

    // 2. The leader crashes (SIGKILL); the kubelet restarts it. Whoever renews the Lease
    // next, the restarted process or the standby, must change nothing.
    let crashed = next;
    signal(process_of(&crashed), "KILL");
    let (killed_at, killed) = (jiff::Timestamp::now(), Instant::now());
    let (next, leased, working) = wait_leader(rig, "the Lease renewed after the leader was killed", killed, |_, t| t > killed_at).await;
    let by = if next == crashed { "the restarted leader" } else { "the standby" };
    report.push(format!(
        "killed leader → Lease renewed by {by} {leased:.1?}, reconciles {working:.1?}"
    ));
    wait_two_controllers(rig, "the killed leader back").await;

    // 3. SIGTERM in both roles, as a drain or an upgrade sends it: the leader hands the Lease
    // over before it exits, and the standby exits at once (not at the grace period's end).
    let pods = controller_pods(rig);
    let standby = pods.keys().find(|p| **p != next).expect("a standby").clone();
    let deleted = Instant::now();
    support::kubectl_ok(rig, &["-n", &controller_ns(), "delete", "pod", &next, "--wait=false"], None);
    let old = next.clone();
    let (next, leased, working) = wait_leader(rig, "the Lease handed over on SIGTERM", deleted, |h, _| h != old).await;
    report.push(format!(
        "leader deleted (SIGTERM) → Lease handed over {leased:.1?}, reconciles {working:.1?}"
    ));
    wait_or_explain(
        "the old leader's Pod gone",
        WAIT,
        || async { (!controller_pods(rig).contains_key(&old)).then_some(()) },
        String::new,
    )
    .await;
    report.push(format!("leader deleted → its Pod gone {:.1?}", deleted.elapsed()));
    let standby = if standby == next {
        controller_pods(rig).into_keys().find(|p| *p != next).expect("the new standby")
    } else {
        standby
    };
    wait_two_controllers(rig, "a new standby").await;
    let deleted = Instant::now();
    support::kubectl_ok(rig, &["-n", &controller_ns(), "delete", "pod", &standby, "--wait=false"], None);
    wait_or_explain(
        "the standby's Pod gone",
        WAIT,
        || async { (!controller_pods(rig).contains_key(&standby)).then_some(()) },
        String::new,
    )
    .await;
    let standby_gone = deleted.elapsed();
    report.push(format!("standby deleted (SIGTERM) → its Pod gone {standby_gone:.1?}"));
    assert!(
        standby_gone < Duration::from_secs(10),
        "the standby waited {standby_gone:?} for SIGKILL"
    );
    wait_two_controllers(rig, "two controllers after the deletes").await;

    // 4. The API server goes away for 10 s and comes back: watches end, renewals fail, the
    // leader's writes pause; afterwards it lists everything again and must change nothing.
    let apiserver = ApiServerProcess::of(rig);
    let outage = jiff::Timestamp::now();
    apiserver.stop();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    apiserver.start();
    wait_or_explain(
        "the API server ready again",
        WAIT,
        || async { kubectl(rig, &["get", "--raw", "/readyz"]).status.success().then_some(()) },
        String::new,
    )
    .await;
    let back = Instant::now();
    // A starting API server answers 403 until its RBAC cache has synced: those refusals are
    // not the chart's RBAC failing (tests/e2e/with-node.sh checks every other one).
    excuse_refusals(
        rig,
        outage,
        jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10),
        "API server restart",
    );
    let (_, leased, _) = wait_leader(rig, "a leader after the API server restart", back, |_, t| {
        t > jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5)
    })
    .await;
    report.push(format!(
        "API server away {:.1?}; once back, a Lease renewal {leased:.1?} later",
        back - stopped
    ));
    wait_two_controllers(rig, "two controllers after the API server restart").await;
    // A re-list and a reconcile of everything: the leader's periodic look (and the restart's
    // relists) have had time to write anything they were going to.
    tokio::time::sleep(Duration::from_secs(15)).await;

    let tally = traffic.finish().await;
    for line in &report {
        eprintln!("e2e: failover: {line}");
    }
    eprintln!(
        "e2e: failover: anonymous requests through the ClusterIP: {} answered by the proxy, {} by the app, {} failed, other {:?}",
        tally.protected,
        tally.exposed.len(),
        tally.failed,
        tally.other
    );
    assert!(
        tally.exposed.is_empty(),
        "anonymous requests reached the app during failover: {:#?}",
        tally.exposed
    );
    assert!(tally.protected > 500, "too few requests answered to tell: {tally:?}");
    let writes = writes_to_the_app(rig, n, audit_from);
    assert!(
        writes.is_empty(),
        "the controller wrote to the protected app during failover:\n{}",
        writes.join("\n")
    );
    let deployment = get_json(rig, n, "deployment/echo").expect("deployment");
    assert_eq!(deployment["metadata"]["generation"], generation, "the Deployment changed");
    let svc = get_json(rig, n, "service/echo").expect("service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "sidekey-http", "{svc:#}");
    wait_ready(rig, n, "echo").await;

    // And the last leader is working: an edit reaches the sidecar.
    apply(
        rig,
        n,
        &client
            .policy("echo", "")
            .replace("allowedGroups: [admins]", "allowedGroups: [admins, ops]"),
    );
    wait_or_explain(
        "the edit applied by the leader",
        WAIT,
        || async {
            let d = get_json(rig, n, "deployment/echo")?;
            d["spec"]["template"]["spec"]["initContainers"]
                .to_string()
                .contains("--allowed-group=ops")
                .then_some(())
        },
        String::new,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_started_before_its_crd_waits_for_it_and_starts_without_a_restart() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let cns = controller_ns();
    const CRD: &str = "crd/authpolicies.sidekey.dev";
    // The CRD as the chart installed it, labels and annotations included, to put back as is.
    let mut crd = try_get(rig, "default", CRD).expect("the AuthPolicy CRD");
    for field in ["uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"] {
        crd["metadata"].as_object_mut().expect("metadata").remove(field);
    }
    crd.as_object_mut().expect("crd").remove("status");
    let restore = CrdBack {
        rig,
        crd: crd.to_string(),
        done: false,
    };

    support::kubectl_ok(rig, &["delete", CRD, "--timeout=60s"], None);
    let old: Vec<String> = controller_pods(rig).into_keys().collect();
    support::kubectl_ok(
        rig,
        &["-n", &cns, "delete", "pods", "-l", "app.kubernetes.io/name=sidekey", "--wait=false"],
        None,
    );
    // The new leader, started without the CRD, says why it is not ready.
    let leader = wait_or_explain(
        "a new leader saying the CRD is missing",
        WAIT,
        || async {
            let (holder, _) = lease(rig).filter(|(h, _)| !old.contains(h))?;
            let ip = controller_pods(rig).get(&holder)?.0.clone();
            let r = http_get(&format!("{ip}:8080"), "/readyz").await?;
            (r.status == 503 && r.body.contains("AuthPolicy CRD not installed")).then_some(holder)
        },
        || format!("Lease {:?}; pods {:#?}", lease(rig), controller_pods(rig)),
    )
    .await;
    // Two polls later it has still said so only once.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let log = String::from_utf8_lossy(&kubectl(rig, &["-n", &cns, "logs", &leader]).stdout).into_owned();
    let said = log.matches("is not installed").count();
    assert_eq!(said, 1, "the missing CRD logged {said} times:\n{log}");

    let ip = controller_pods(rig).get(&leader).expect("the leader's Pod").0.clone();
    let readyz = || async { http_get(&format!("{ip}:8080"), "/readyz").await.map(|r| r.status) };
    assert_eq!(readyz().await, Some(503), "the leader is ready without its CRD");
    let created = Instant::now();
    restore.put_back();
    wait_for("the leader ready once the CRD is there", WAIT, || async {
        (readyz().await == Some(200)).then_some(())
    })
    .await;
    let ready = created.elapsed();
    wait_two_controllers(rig, "both controllers Ready once the CRD is there").await;
    let ns = TestNamespace::new(rig, "crd-late");
    let n = ns.name.as_str();
    apply(rig, n, &client_policy_on_a_missing_route());
    wait_or_explain(
        "the policy's status from the leader",
        WAIT,
        || async { get_json(rig, n, "authpolicy/lonely").filter(|p| support::condition(p, "Accepted").is_some()) },
        || format!("pods {:#?}", controller_pods(rig)),
    )
    .await;
    eprintln!("e2e: CRD installed after the controller: Ready {ready:.1?} later, and reconciling, with no restart");
    let out = kubectl(
        rig,
        &["-n", &cns, "get", "pods", "-l", "app.kubernetes.io/name=sidekey", "-o", "json"],
    );
    let pods: Value = serde_json::from_slice(&out.stdout).expect("pods");
    let restarts: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]["containerStatuses"][0]["restartCount"]))
        .collect();
    assert!(restarts.iter().all(|r| r.ends_with(" 0")), "a controller restarted: {restarts:?}");
    support::kubectl_ok(rig, &["-n", n, "delete", "authpolicy/lonely", "--timeout=60s"], None);
}

/// An AuthPolicy whose HTTPRoute does not exist: the leader answers with a status at once.
fn client_policy_on_a_missing_route() -> String {
    r#"apiVersion: sidekey.dev/v1alpha1
kind: AuthPolicy
metadata: { name: lonely }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing }]
  provider: { type: oidc, issuerURL: "https://idp.example.com", clientID: app, clientSecretRef: { name: idp, key: secret } }
  access: { allowedGroups: [admins] }
"#
    .to_string()
}

/// Puts the CRD back when dropped, whatever the test did, so the scenarios after it have it.
struct CrdBack<'a> {
    rig: &'a Rig,
    crd: String,
    done: bool,
}

impl CrdBack<'_> {
    fn put_back(mut self) {
        if let Err(e) = self.create() {
            panic!("putting the AuthPolicy CRD back: {e}");
        }
    }

    fn create(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        for args in [
            &["create", "-f", "-"][..],
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/authpolicies.sidekey.dev",
            ],
        ] {
            let out = support::kubectl_stdin(self.rig, args, Some(&self.crd));
            if !out.status.success() {
                return Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(())
    }
}

impl Drop for CrdBack<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.create() {
            eprintln!("e2e: could not put the AuthPolicy CRD back: {e}");
        }
    }
}
