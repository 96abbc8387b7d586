//! The planner over hand-built snapshots: what one reconcile writes, and the clean-up.

use k8s_openapi::api::apps::v1::Deployment as ApiDeployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::*;
use crate::cache::Snapshot;
use crate::gateway::HTTPRoute;
use crate::render::SidecarMode;

fn policy(name: &str, created: &str, finalized: bool) -> AuthPolicy {
    let mut p: AuthPolicy = serde_json::from_value(json!({
        "apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("u-{name}"), "resourceVersion": "10",
                     "creationTimestamp": created},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "provider": {"type": "oidc", "issuerURL": "https://idp.example.com", "clientID": "c",
                         "clientSecretRef": {"name": "idp", "key": "secret"}},
            "access": {"allowedGroups": ["g"]},
        },
    }))
    .unwrap();
    if finalized {
        p.metadata.finalizers = Some(vec!["other.example.com/keep".into(), FINALIZER.into()]);
    }
    p
}

fn world() -> Snapshot {
    let route: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
    }))
    .unwrap();
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]},
    }))
    .unwrap();
    let deployment: ApiDeployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps", "generation": 1},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }))
    .unwrap();
    let mut w = Snapshot::new();
    w.add_route(route).add_service(service).add_deployment(deployment);
    w
}

fn opts() -> RenderOptions {
    RenderOptions {
        proxy_image: "sidekey-proxy:test".into(),
        mode: SidecarMode::Native,
        service_account_issuer: None,
    }
}

fn plan_for(p: &AuthPolicy, w: &Snapshot, validation: Vec<String>) -> Plan {
    plan(Input {
        policy: p,
        cache: w,
        opts: &opts(),
        validation,
        assume_rolled_out: false,
        sidecar_failures: &BTreeMap::new(),
        now: jiff::Timestamp::now(),
    })
}

fn keys(applies: &[Apply]) -> Vec<String> {
    applies.iter().map(|a| a.key.to_string()).collect()
}

#[test]
fn each_situation_plans_exactly_its_writes() {
    let fresh = policy("web", "2026-01-01T00:00:00Z", false);
    let finalized = policy("web", "2026-01-01T00:00:00Z", true);
    struct Case {
        what: &'static str,
        policy: AuthPolicy,
        validation: Vec<String>,
        finalizer: bool,
        deployments: Vec<&'static str>,
        status_reason: &'static str,
    }
    for c in [
        Case {
            what: "a new policy: the finalizer first, then the sidecar",
            policy: fresh.clone(),
            validation: vec![],
            finalizer: true,
            deployments: vec!["apps/web"],
            status_reason: reason::ROLLOUT_PENDING,
        },
        Case {
            what: "finalized already: the sidecar only",
            policy: finalized.clone(),
            validation: vec![],
            finalizer: false,
            deployments: vec!["apps/web"],
            status_reason: reason::ROLLOUT_PENDING,
        },
        Case {
            what: "invalid: the finalizer and the status, no workload write",
            policy: fresh.clone(),
            validation: vec!["bad regex".into()],
            finalizer: true,
            deployments: vec![],
            status_reason: reason::INVALID,
        },
    ] {
        let p = plan_for(&c.policy, &world(), c.validation);
        assert_eq!(p.add_finalizer.is_some(), c.finalizer, "{}", c.what);
        if let Some(f) = &p.add_finalizer {
            assert_eq!(f.last().map(String::as_str), Some(FINALIZER), "{}", c.what);
        }
        assert_eq!(keys(&p.deployment_applies), c.deployments, "{}", c.what);
        assert!(p.service_applies.is_empty() && p.remove_finalizer.is_none(), "{}", c.what);
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .expect("a status");
        assert_eq!(ready.reason, c.status_reason, "{}", c.what);
    }
}

#[test]
fn the_oldest_policy_wins_a_shared_deployment() {
    let old = policy("old", "2026-01-01T00:00:00Z", true);
    let new = policy("new", "2026-02-01T00:00:00Z", true);
    let mut w = world();
    w.add_policy(old.clone()).add_policy(new.clone());
    assert_eq!(keys(&plan_for(&old, &w, vec![]).deployment_applies), ["apps/web"]);
    let p = plan_for(&new, &w, vec![]);
    assert!(p.deployment_applies.is_empty(), "the newer policy writes no workload");
    let accepted = p.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", reason::CONFLICTED));
}

#[test]
fn cleanup_restores_releases_deletes_then_drops_only_our_finalizer() {
    let p = policy("web", "2026-01-01T00:00:00Z", true);
    let owner = ObjKey::of(&p).to_string();
    let mut w = world();
    // What an earlier reconcile left: the Deployment and the Service carry our annotation.
    let mut d = w.deployment(&ObjKey::new("apps", "web")).unwrap().as_ref().clone();
    d.metadata.annotations = Some([(crate::names::ANNOTATION_POLICY.to_string(), owner.clone())].into());
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "annotations": {
            crate::names::ANNOTATION_POLICY: owner, ANNOTATION_ORIGINAL_PORTS: "{\"80/TCP\":\"http\"}"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": "sidekey-http"}]},
    }))
    .unwrap();
    w.add_deployment(d).add_service(svc);

    let c = cleanup(&p, &w);
    assert_eq!(keys(&c.service_restores), ["apps/web"]);
    assert_eq!(c.service_restores[0].body["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(keys(&c.deployment_releases), ["apps/web"]);
    assert_eq!(
        c.deployment_releases[0].body.as_object().unwrap().len(),
        3,
        "an empty apply releases our fields"
    );
    assert!(
        c.delete_secrets.is_empty(),
        "the cookie Secret in the policy's namespace goes with the policy"
    );
    assert_eq!(c.remove_finalizer, Some(vec!["other.example.com/keep".to_string()]));
    assert_eq!(c.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["Removed"]);
    assert_eq!(c.writes(), 3);

    // Our finalizer gone already: nothing to do.
    let mut done = p.clone();
    done.metadata.finalizers = Some(vec!["other.example.com/keep".into()]);
    assert_eq!(cleanup(&done, &w), Plan::default());
}
