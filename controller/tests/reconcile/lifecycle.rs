//! A policy's life without faults: injection, the Service switch, edits, route changes,
//! conflicts, invalid specs, deletion.

use http::Method;
use serde_json::json;
use sidekey_controller::cache::ObjKey;

use super::support::*;

#[tokio::test]
async fn first_apply_adds_finalizer_secret_sidecar_status_and_event() {
    let (res, sent, ctx) = run(&world(), &policy(false), echo()).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {POLICY}"),
            format!("POST {SECRETS}"),
            format!("PATCH {}", deployment_path("hello")),
            format!("PATCH {POLICY_STATUS}"),
            format!("POST {EVENTS}"),
        ]
    );
    // Finalizer: a compare-and-swap on resourceVersion.
    assert_eq!(
        sent[0].body,
        json!({"metadata": {"finalizers": ["sidekey.dev/cleanup"], "resourceVersion": "10"}})
    );
    // Cookie secret: random 32 bytes, owned by the policy, no Argo CD tracking label.
    let secret = &sent[1].body;
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(secret["stringData"]["cookie-secret"].as_str().unwrap().len(), 44);
    assert!(secret["metadata"]["labels"].get("app.kubernetes.io/instance").is_none());
    // Server-side apply with our own field manager, forced, holding only our fields.
    let apply = &sent[2];
    assert_eq!(apply.params(), "fieldManager=sidekey-controller&force=true");
    let spec = &apply.body["spec"]["template"]["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "sidekey-proxy");
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    assert!(spec.get("containers").is_none(), "never the app's own containers: {spec}");
    assert_eq!(
        spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "api://AzureADTokenExchange"
    );
    assert_eq!(
        apply.body["metadata"].as_object().unwrap().len(),
        3,
        "name, namespace, our annotation"
    );
    // Not switched yet: the rollout has not happened.
    assert!(sent.iter().all(|s| !s.path.contains("/services/")));
    let status = &sent[3];
    assert_eq!(condition(status, "Accepted"), ("True".into(), "Accepted".into()));
    assert_eq!(condition(status, "Ready"), ("False".into(), "RolloutPending".into()));
    assert_eq!(
        status.body["status"]["workloadIdentity"]["subjects"],
        json!(["system:serviceaccount:apps:hello"])
    );
    assert_eq!(sent[4].body["reason"], "Injected");
    assert_eq!(ctx.metrics.total_writes(), 4);
}

#[tokio::test]
async fn rollout_switches_the_service_then_a_resync_writes_nothing() {
    let mut w = world();
    let (_, sent, _) = run(&w, &policy(false), echo()).await;
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");

    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [format!("PATCH {}", service_path("hello")), format!("PATCH {POLICY_STATUS}")]
    );
    let svc = &sent[0];
    assert_eq!(svc.params(), "fieldManager=sidekey-controller&force=true");
    assert_eq!(
        svc.body["spec"]["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": "sidekey-http"}])
    );
    assert_eq!(
        svc.body["metadata"]["annotations"]["sidekey.dev/original-target-ports"],
        r#"{"80/TCP":"http"}"#
    );
    assert_eq!(condition(&sent[1], "Ready"), ("True".into(), "Ready".into()));
    assert_eq!(sent[1].body["status"]["protected"], 1);

    let p = with_status(p, &sent[1]);
    w.add_service(applied_service(&service("hello", "hello"), svc));
    for _ in 0..3 {
        let (res, sent, ctx) = run(&w, &p, echo()).await;
        res.unwrap();
        assert_eq!(lines(&sent), Vec::<String>::new(), "steady state must not write");
        assert_eq!(ctx.metrics.total_writes(), 0);
    }
}

#[tokio::test]
async fn policy_edit_reapplies_the_sidecar_only() {
    let (w, mut p) = converge().await;
    p.spec.access.allowed_groups.push("g2".into());
    p.metadata.generation = Some(2);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", deployment_path("hello")),
            format!("PATCH {POLICY_STATUS}"),
            format!("POST {EVENTS}")
        ]
    );
    let args = sent[0].body["spec"]["template"]["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(args.contains(&json!("--allowed-group=g2")));
    assert_eq!(sent[1].body["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn secret_rotation_rolls_the_pods() {
    let (mut w, mut p) = converge().await;
    p.spec.session = Some(serde_json::from_value(json!({"cookieSecretRef": {"name": "my-cookie", "key": "secret"}})).unwrap());
    w.add_secret(ObjKey::new("apps", "my-cookie"), "d1");
    let hash = |s: &Sent| {
        s.body["spec"]["template"]["metadata"]["annotations"]["sidekey.dev/config-hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    let first = find(&sent, Method::PATCH, &deployment_path("hello")).clone();
    let d = applied_deployment(&deployment("hello", "hello"), &first);
    w.add_deployment(d);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert!(
        sent.iter().all(|s| !s.path.contains("/deployments/")),
        "unchanged secret: no rollout"
    );
    w.add_secret(ObjKey::new("apps", "my-cookie"), "d2");
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    let second = find(&sent, Method::PATCH, &deployment_path("hello"));
    assert_ne!(hash(&first), hash(second), "a rotated secret changes the pod template");
}

#[tokio::test]
async fn a_deployment_added_later_is_injected() {
    let (mut w, p) = converge().await;
    let mut canary = deployment("hello-canary", "hello");
    canary.spec.as_mut().unwrap().template.spec.as_mut().unwrap().service_account_name = Some("canary".into());
    w.add_deployment(canary);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", deployment_path("hello-canary")),
            format!("PATCH {POLICY_STATUS}"),
            format!("POST {EVENTS}")
        ]
    );
    let status = &sent[1];
    assert_eq!(condition(status, "Ready"), ("False".into(), "RolloutPending".into()));
    assert_eq!(
        status.body["status"]["workloadIdentity"]["subjects"],
        json!(["system:serviceaccount:apps:canary", "system:serviceaccount:apps:hello"])
    );
}

#[tokio::test]
async fn a_route_change_moves_protection_to_the_new_backend() {
    let (mut w, p) = converge().await;
    w.add_route(route("hello-v2"))
        .add_service(service("hello-v2", "hello-v2"))
        .add_deployment(deployment("hello-v2", "hello-v2"));
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", deployment_path("hello-v2")),
            format!("PATCH {}", service_path("hello")),
            format!("PATCH {}", deployment_path("hello")),
            format!("PATCH {POLICY_STATUS}"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    // The old Service gets its original targetPort back; our annotations are dropped.
    assert_eq!(
        sent[1].body,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "namespace": "apps"},
               "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]}})
    );
    // The old Deployment: an empty apply releases every field we own.
    assert_eq!(
        sent[2].body,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello", "namespace": "apps"}})
    );
    assert_eq!(sent[2].params(), "fieldManager=sidekey-controller&force=true");
}

#[tokio::test]
async fn deletion_restores_the_service_releases_the_deployment_then_drops_the_finalizer() {
    let (w, p) = converge().await;
    let p = deleting(p);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent), cleanup_requests());
    assert_eq!(sent[0].body["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(sent[1].body.as_object().unwrap().len(), 3);
    assert_eq!(sent[3].body, json!({"metadata": {"finalizers": [], "resourceVersion": "10"}}));

    // Already cleaned up (finalizer gone): nothing to do.
    let mut p = p;
    p.metadata.finalizers = None;
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert!(sent.is_empty());
}

#[tokio::test]
async fn a_newer_policy_on_the_same_deployment_reports_conflicted_and_writes_no_workload() {
    let (mut w, older) = converge().await;
    w.add_policy(older.clone());
    let mut newer = policy(true);
    newer.metadata.name = Some("newer".into());
    newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-03-01T00:00:00Z".parse().unwrap(),
    ));
    w.add_policy(newer.clone());
    let (res, sent, _) = run(&w, &newer, echo()).await;
    res.unwrap();
    let status_path = "/apis/sidekey.dev/v1alpha1/namespaces/apps/authpolicies/newer/status";
    assert_eq!(lines(&sent), [format!("PATCH {status_path}"), format!("POST {EVENTS}")]);
    assert_eq!(condition(&sent[0], "Accepted"), ("False".into(), "Conflicted".into()));
    assert!(
        sent[0].body["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("apps/hello")
    );
    assert_eq!(sent[1].body["type"], "Warning");
    // The older one is unaffected: still zero writes.
    let (res, sent, _) = run(&w, &older, echo()).await;
    res.unwrap();
    assert!(sent.is_empty(), "{:?}", lines(&sent));
}

#[tokio::test]
async fn an_invalid_policy_keeps_existing_protection_and_says_why() {
    let (w, mut p) = converge().await;
    p.spec.skip_auth = Some(serde_json::from_value(json!({"routes": [{"path": "^/(health"}]})).unwrap());
    p.metadata.generation = Some(3);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent), [format!("PATCH {POLICY_STATUS}")], "no workload write, no release");
    assert_eq!(condition(&sent[0], "Accepted"), ("False".into(), "Invalid".into()));
    assert!(
        sent[0].body["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("skipAuth.routes[0].path")
    );
}
