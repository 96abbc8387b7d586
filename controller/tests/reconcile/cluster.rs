//! What the reconciler needs from the cluster: the RBAC the install grants, the Pods of a
//! pending rollout, and caches listed before the first write.

use std::time::Duration;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sidekey_controller::cache::ObjKey;
use sidekey_controller::reconcile;

use super::support::*;

/// Every API call a reconcile makes, as an RBAC (group, resource, verb).
fn rbac_of(s: &Sent) -> (String, String, String) {
    let parts: Vec<&str> = s.path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/ns/<resource>[/name[/sub]] or /apis/<group>/<v>/namespaces/ns/...
    let (group, rest) = match parts[0] {
        "api" => ("", &parts[2..]),
        _ => (parts[1], &parts[3..]),
    };
    let resource = match rest {
        ["namespaces", _, r, _, sub] => format!("{r}/{sub}"),
        ["namespaces", _, r, ..] => r.to_string(),
        other => panic!("unexpected path {other:?}"),
    };
    let verb = match s.method {
        Method::PATCH => "patch",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        // A collection (`namespaces/<ns>/<resource>`) is listed; one object is read.
        Method::GET if rest.len() == 3 => "list",
        Method::GET => "get",
        _ => "other",
    };
    (group.to_string(), resource, verb.to_string())
}

/// The ClusterRole and Role the install grants (manifests/install is the chart's default
/// render, checked by tests/k8s/chart_test.py).
fn granted() -> std::collections::BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/install/rbac.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut out = std::collections::BTreeSet::new();
    for d in docs.iter().filter(|d| {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")) && (name.ends_with("-controller") || name.ends_with("-leader-election"))
    }) {
        for rule in d["rules"].as_array().unwrap() {
            for url in rule["nonResourceURLs"].as_array().into_iter().flatten() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.insert(("nonResourceURL".into(), url.as_str().unwrap().into(), v.as_str().unwrap().into()));
                }
            }
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.insert((g.as_str().unwrap().into(), r.as_str().unwrap().into(), v.as_str().unwrap().into()));
                    }
                }
            }
        }
    }
    out
}

/// The pods of a pending rollout whose sidecar crash-loops: `world` with the sidecar applied
/// and its pods failing, as the API server lists them.
fn crash_looping(message: &str) -> Responder {
    let message = message.to_string();
    Box::new(move |s: &Sent| {
        if s.method == Method::GET && s.path == "/api/v1/namespaces/apps/pods" {
            assert_eq!(s.query, "&labelSelector=app%3Dhello", "the Deployment's pods only");
            let pod = json!({"metadata": {"name": "hello-5d8f-x2", "namespace": "apps"}, "status": {"initContainerStatuses": [
                {"name": "sidekey-proxy", "ready": false, "restartCount": 4, "image": "p", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 2, "message": message}}}]}});
            return (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}),
            );
        }
        reply(s)
    })
}

/// A sidecar that cannot start changes nothing a watch sees: the policy looks at the pods of
/// a pending rollout, says why in its status (the proxy's own error line), and looks again
/// soon rather than in five minutes.
#[tokio::test]
async fn a_crash_looping_sidecar_is_reported_with_the_proxys_own_error() {
    let mut w = world();
    let (_, sent, _) = run(&w, &policy(false), echo()).await;
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let mut d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    d.status.as_mut().unwrap().updated_replicas = Some(0);
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let error = "sidekey-proxy: invalid configuration: option `--skip-auth-route`: regex parse error";
    let (res, sent, _) = run(&w, &p, crash_looping(error)).await;
    assert_eq!(res.unwrap(), Action::requeue(reconcile::ROLLOUT_POLL));
    let status = find(&sent, Method::PATCH, POLICY_STATUS);
    assert_eq!(condition(status, "Ready"), ("False".into(), "SidecarFailing".into()));
    let message = condition_message(status, "Ready");
    assert_eq!(
        message,
        format!("Deployment apps/hello: pod apps/hello-5d8f-x2: sidekey-proxy CrashLoopBackOff (restarted 4 times): {error}")
    );
    assert!(
        sent.iter().all(|s| !s.path.contains("/services/")),
        "never switched to a failing sidecar"
    );
    // Fixed (the pods list healthy now): back to waiting for the rollout.
    let p = with_status(p, status);
    let (res, sent, _) = run(&w, &p, echo()).await;
    assert_eq!(res.unwrap(), Action::requeue(reconcile::ROLLOUT_POLL));
    assert_eq!(condition(find(&sent, Method::PATCH, POLICY_STATUS), "Ready").1, "RolloutPending");
}

#[tokio::test]
async fn the_install_grants_exactly_the_verbs_the_controller_uses() {
    let mut used = std::collections::BTreeSet::new();
    // Inject, switch, delete: every write path of a policy's life.
    let mut w = world();
    let (_, sent, _) = run(&w, &policy(false), echo()).await;
    used.extend(sent.iter().map(rbac_of));
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    // A pending rollout: the pods are listed to see whether the sidecar fails.
    let mut pending = w.clone();
    let mut stuck = d.clone();
    stuck.status.as_mut().unwrap().updated_replicas = Some(0);
    pending
        .add_deployment(stuck)
        .add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let (_, sent, _) = run(&pending, &p, crash_looping("x")).await;
    used.extend(sent.iter().map(rbac_of));
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let (_, sent, _) = run(&w, &p, echo()).await;
    used.extend(sent.iter().map(rbac_of));
    let (w, p) = converge().await;
    let p = deleting(p);
    let (_, sent, _) = run(&w, &p, echo()).await;
    used.extend(sent.iter().map(rbac_of));

    let s = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    // The runtime's reflectors list and watch these (runtime.rs); leader election gets,
    // creates and updates its Lease (tests/runtime.rs drives it against a mock API).
    for (g, r) in [
        ("sidekey.dev", "authpolicies"),
        ("", "services"),
        ("apps", "deployments"),
        ("", "secrets"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "referencegrants"),
    ] {
        used.insert(s(g, r, "list"));
        used.insert(s(g, r, "watch"));
    }
    for v in ["get", "create", "update"] {
        used.insert(s("coordination.k8s.io", "leases", v));
    }
    // The runtime reads the service-account issuer at start (runtime::service_account_issuer).
    used.insert(s("nonResourceURL", "/.well-known/openid-configuration", "get"));
    // Used on paths these scenarios do not reach: kube's event Recorder patches a repeated
    // event's series; cross-namespace generated cookie Secrets are deleted on cleanup.
    used.insert(s("events.k8s.io", "events", "patch"));
    used.insert(s("", "secrets", "delete"));

    let granted = granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the controller uses verbs the install does not grant: {missing:?}"
    );
    assert!(extra.is_empty(), "the install grants verbs the controller never uses: {extra:?}");
}

/// A new leader's caches fill kind by kind. Until every kind is listed, a protected app
/// whose route is not loaded yet looks unprotected-by-policy: acting on that would release
/// the sidecar and point the Service back at the app port (seen on a real node on nearly
/// every failover). The reconcile waits instead, without a single request.
#[tokio::test]
async fn a_reconcile_before_every_cache_is_listed_writes_nothing() {
    let (mut w, p) = converge().await;
    // The policies, Deployments and Services are listed; the routes are not yet.
    w.routes.clear();
    w.listing = true;
    let (res, sent, _) = run(&w, &p, echo()).await;
    let action = res.unwrap();
    assert!(sent.is_empty(), "wrote before the caches were listed: {sent:#?}");
    assert_eq!(action, Action::requeue(Duration::from_millis(200)));
    // The same view once listing is over is a real route deletion: then (and only then) the
    // sidecar is released. This is what the wait above protects against.
    w.listing = false;
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert!(
        sent.iter().any(|s| s.method == Method::PATCH && s.path == deployment_path("hello")),
        "{sent:#?}"
    );
}
