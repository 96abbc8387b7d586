//! The mock API server and the fixtures: one app (Deployment, Service, HTTPRoute) and its policy.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sidekey_controller::api::AuthPolicy;
use sidekey_controller::cache::{ObjKey, Snapshot};
use sidekey_controller::gateway::HTTPRoute;
use sidekey_controller::merge;
use sidekey_controller::metrics::Metrics;
use sidekey_controller::policy_index::Index;
use sidekey_controller::reconcile::{self, Context};
use sidekey_controller::render::{RenderOptions, SidecarMode};

#[derive(Debug, Clone)]
pub struct Sent {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Sent {
    /// The query's parameters in a stable order.
    pub fn params(&self) -> String {
        let mut p: Vec<&str> = self.query.split('&').filter(|p| !p.is_empty()).collect();
        p.sort();
        p.join("&")
    }

    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

pub type Responder = Box<dyn Fn(&Sent) -> (StatusCode, Value) + Send>;

/// Echoes what was sent (what the API server returns for applies, creates and patches).
pub fn echo() -> Responder {
    Box::new(reply)
}

pub fn reply(s: &Sent) -> (StatusCode, Value) {
    if s.path.contains("/authpolicies/") {
        // The API server answers a policy patch with the whole policy.
        let mut p = serde_json::to_value(policy(true)).unwrap();
        merge::merge(&mut p, &s.body);
        return (StatusCode::OK, p);
    }
    (StatusCode::OK, s.body.clone())
}

pub fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

pub async fn run(
    world: &Snapshot,
    policy: &AuthPolicy,
    responder: Responder,
) -> (Result<Action, reconcile::Error>, Vec<Sent>, Arc<Context>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Ok(Some((req, respond))) = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let s = Sent {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, reply) = responder(&s);
            sent.push(s);
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        sent
    });
    let client = kube::Client::new(mock, "default");
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(world.clone()),
        RenderOptions {
            proxy_image: "ghcr.io/sidekey-dev/sidekey-proxy:v0.1.0".into(),
            mode: SidecarMode::Native,
            service_account_issuer: None,
        },
        Arc::new(Metrics::default()),
        Arc::new(Index::default()),
    ));
    let result = reconcile::reconcile(Arc::new(policy.clone()), ctx.clone()).await;
    // Dropping every client handle ends the mock server's loop.
    let ctx_for_caller = Arc::new(Context::new(
        kube::Client::new(tower_test::mock::pair::<Request<Body>, Response<Body>>().0, "default"),
        ctx.cache.clone(),
        ctx.opts.clone(),
        ctx.metrics.clone(),
        ctx.index.clone(),
    ));
    drop(ctx);
    let sent = server.await.unwrap();
    (result, sent, ctx_for_caller)
}

pub fn lines(sent: &[Sent]) -> Vec<String> {
    sent.iter().map(Sent::line).collect()
}

pub const POLICY: &str = "/apis/sidekey.dev/v1alpha1/namespaces/apps/authpolicies/hello";
pub const POLICY_STATUS: &str = "/apis/sidekey.dev/v1alpha1/namespaces/apps/authpolicies/hello/status";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";
pub const SECRETS: &str = "/api/v1/namespaces/apps/secrets";

pub fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/apps/deployments/{name}")
}
pub fn service_path(name: &str) -> String {
    format!("/api/v1/namespaces/apps/services/{name}")
}

pub fn policy(finalized: bool) -> AuthPolicy {
    let mut p: AuthPolicy = serde_json::from_value(json!({
        "apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "hello", "namespace": "apps", "uid": "u-1", "generation": 1, "resourceVersion": "10",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "hello"}],
            "provider": {"type": "entra-id", "issuerURL": "https://login.microsoftonline.com/tenant-1/v2.0", "clientID": "client-1", "workloadIdentity": {}},
            "access": {"allowedGroups": ["g1"]},
        },
    }))
    .unwrap();
    if finalized {
        p.metadata.finalizers = Some(vec!["sidekey.dev/cleanup".into()]);
    }
    p
}

pub fn route(service: &str) -> HTTPRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "hello", "namespace": "apps"},
        "spec": {"hostnames": ["hello.example.com"], "rules": [{"backendRefs": [{"name": service, "port": 80}]}]},
    }))
    .unwrap()
}

pub fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "apps"},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
    }))
    .unwrap()
}

pub fn deployment(name: &str, app: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "apps", "generation": 1},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}}, "template": {
            "metadata": {"labels": {"app": app}},
            "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }))
    .unwrap()
}

pub fn world() -> Snapshot {
    let mut w = Snapshot::new();
    w.add_route(route("hello"))
        .add_service(service("hello", "hello"))
        .add_deployment(deployment("hello", "hello"));
    w
}

/// What the API server holds after our apply, with the rollout finished.
pub fn applied_deployment(d: &Deployment, sent: &Sent) -> Deployment {
    let mut v = serde_json::to_value(d).unwrap();
    merge::merge(&mut v, &sent.body);
    v["metadata"]["generation"] = json!(d.metadata.generation.unwrap() + 1);
    v["status"]["observedGeneration"] = v["metadata"]["generation"].clone();
    serde_json::from_value(v).unwrap()
}

pub fn applied_service(s: &Service, sent: &Sent) -> Service {
    let mut v = serde_json::to_value(s).unwrap();
    merge::merge(&mut v, &sent.body);
    serde_json::from_value(v).unwrap()
}

pub fn with_status(mut p: AuthPolicy, sent: &Sent) -> AuthPolicy {
    p.status = Some(serde_json::from_value(sent.body["status"].clone()).unwrap());
    p
}

pub fn find<'a>(sent: &'a [Sent], method: Method, path: &str) -> &'a Sent {
    sent.iter()
        .find(|s| s.method == method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", lines(sent)))
}

/// The condition of `type_` in a status patch.
pub fn status_condition<'a>(p: &'a Sent, type_: &str) -> &'a Value {
    p.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {}", p.body))
}

pub fn condition_message(p: &Sent, type_: &str) -> String {
    status_condition(p, type_)["message"].as_str().unwrap().to_string()
}

pub fn condition(p: &Sent, type_: &str) -> (String, String) {
    let c = status_condition(p, type_);
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

/// Drives the standard scenario to its steady state: finalizer, secret, Deployment, then
/// (after the rollout) the Service.
pub async fn converge() -> (Snapshot, AuthPolicy) {
    let mut w = world();
    let (res, sent, _) = run(&w, &policy(false), echo()).await;
    res.unwrap();
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    let p = with_status(p, find(&sent, Method::PATCH, POLICY_STATUS));
    let svc = applied_service(&service("hello", "hello"), find(&sent, Method::PATCH, &service_path("hello")));
    w.add_service(svc);
    (w, p)
}

/// `p` as the API server holds it once deleted: a deletion timestamp, the finalizers kept.
pub fn deleting(mut p: AuthPolicy) -> AuthPolicy {
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    p
}

/// The requests of a converged policy's clean-up, in order: the Service restored, the
/// Deployment released, the event, the finalizer dropped.
pub fn cleanup_requests() -> [String; 4] {
    [
        format!("PATCH {}", service_path("hello")),
        format!("PATCH {}", deployment_path("hello")),
        format!("POST {EVENTS}"),
        format!("PATCH {POLICY}"),
    ]
}
