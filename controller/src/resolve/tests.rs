//! Policy → routes → Services → Deployments over hand-built snapshots: each way a target
//! can fail to resolve, and the one way it succeeds.

use k8s_openapi::api::apps::v1::Deployment as ApiDeployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::*;
use crate::cache::Snapshot;
use crate::gateway::{HTTPRoute, ReferenceGrant};

fn policy(target_refs: Value) -> AuthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "p", "namespace": "apps", "uid": "u"},
        "spec": {"targetRefs": target_refs,
                 "provider": {"type": "oidc", "issuerURL": "https://idp.example.com", "clientID": "c",
                              "clientSecretRef": {"name": "idp", "key": "secret"}},
                 "access": {"allowedGroups": ["g"]}},
    }))
    .unwrap()
}

fn route(name: &str, backend: Value) -> HTTPRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "apps"},
        "spec": {"hostnames": ["web.example.com"], "rules": [{"backendRefs": [backend]}]},
    }))
    .unwrap()
}

fn service(ns: &str, target_port: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": target_port}]},
    }))
    .unwrap()
}

fn deployment(ns: &str) -> ApiDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}]}]}}},
    }))
    .unwrap()
}

fn grant_from_apps(ns: &str) -> ReferenceGrant {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": ns},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "apps"}],
                 "to": [{"group": "", "kind": "Service"}]},
    }))
    .unwrap()
}

fn route_ref(name: &str) -> Value {
    json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name}])
}

#[test]
fn every_target_resolves_or_says_why() {
    let same_ns = json!({"name": "web", "port": 80});
    let other_ns = json!({"name": "web", "namespace": "shop", "port": 80});
    let in_apps = |w: &mut Snapshot| {
        w.add_service(service("apps", json!("http"))).add_deployment(deployment("apps"));
    };
    let in_shop = |w: &mut Snapshot| {
        w.add_service(service("shop", json!("http"))).add_deployment(deployment("shop"));
    };
    type Setup = Box<dyn Fn(&mut Snapshot)>;
    let cases: Vec<(&str, Value, Setup, TargetState, &str)> = vec![
        (
            "a route to a Service and its Deployment",
            route_ref("web"),
            Box::new(move |w| {
                w.add_route(route("web", same_ns.clone()));
                in_apps(w);
            }),
            TargetState::Pending,
            "",
        ),
        (
            "a Service target",
            json!([{"group": "", "kind": "Service", "name": "web"}]),
            Box::new(in_apps),
            TargetState::Pending,
            "",
        ),
        (
            "no such route",
            route_ref("gone"),
            Box::new(|_| {}),
            TargetState::NotFound,
            "HTTPRoute apps/gone not found",
        ),
        (
            "a route to a missing Service",
            route_ref("web"),
            Box::new({
                let b = json!({"name": "web", "port": 80});
                move |w| {
                    w.add_route(route("web", b.clone()));
                }
            }),
            TargetState::NotFound,
            "Service apps/web not found",
        ),
        (
            "another namespace without a ReferenceGrant",
            route_ref("web"),
            Box::new({
                let b = other_ns.clone();
                move |w| {
                    w.add_route(route("web", b.clone()));
                    in_shop(w);
                }
            }),
            TargetState::RefNotPermitted,
            "no ReferenceGrant in namespace shop",
        ),
        (
            "another namespace with a ReferenceGrant",
            route_ref("web"),
            Box::new({
                let b = other_ns.clone();
                move |w| {
                    w.add_route(route("web", b.clone())).add_grant(grant_from_apps("shop"));
                    in_shop(w);
                }
            }),
            TargetState::Pending,
            "",
        ),
        (
            "an unsupported kind",
            json!([{"group": "apps", "kind": "Deployment", "name": "web"}]),
            Box::new(in_apps),
            TargetState::Unsupported,
            "only HTTPRoute and Service targets are supported",
        ),
    ];
    for (what, refs, setup, state, message) in cases {
        let mut w = Snapshot::new();
        setup(&mut w);
        let r = resolve(&policy(refs), &w);
        assert_eq!(r.targets.len(), 1, "{what}: {:?}", r.targets);
        let t = &r.targets[0];
        assert_eq!(t.state, state, "{what}: {t:?}");
        assert!(t.message.contains(message), "{what}: {t:?}");
        assert_eq!(
            r.workloads.len(),
            usize::from(state == TargetState::Pending),
            "{what}: {:?}",
            r.workloads.keys()
        );
    }
}
