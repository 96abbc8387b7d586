//! The reconciler against a scenario-checked mock API server (kube's client over
//! `tower_test::mock::pair`): every request it sends is recorded — method, path, query and
//! body — and each test states the exact list. Reads come from the cache, so every request
//! is a write (or an Event).

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
use sidekey_controller::reconcile::{self, Context, Index};
use sidekey_controller::render::{RenderOptions, SidecarMode};

#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Sent {
    /// The query's parameters in a stable order.
    fn params(&self) -> String {
        let mut p: Vec<&str> = self.query.split('&').filter(|p| !p.is_empty()).collect();
        p.sort();
        p.join("&")
    }

    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

type Responder = Box<dyn Fn(&Sent) -> (StatusCode, Value) + Send>;

/// Echoes what was sent (what the API server returns for applies, creates and patches).
fn echo() -> Responder {
    Box::new(reply)
}

fn reply(s: &Sent) -> (StatusCode, Value) {
    if s.path.contains("/authpolicies/") {
        // The API server answers a policy patch with the whole policy.
        let mut p = serde_json::to_value(policy(true)).unwrap();
        merge::merge(&mut p, &s.body);
        return (StatusCode::OK, p);
    }
    (StatusCode::OK, s.body.clone())
}

fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

async fn run(world: &Snapshot, policy: &AuthPolicy, responder: Responder) -> (Result<Action, reconcile::Error>, Vec<Sent>, Arc<Context>) {
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

fn lines(sent: &[Sent]) -> Vec<String> {
    sent.iter().map(Sent::line).collect()
}

const POLICY: &str = "/apis/sidekey.dev/v1alpha1/namespaces/apps/authpolicies/hello";
const POLICY_STATUS: &str = "/apis/sidekey.dev/v1alpha1/namespaces/apps/authpolicies/hello/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";
const SECRETS: &str = "/api/v1/namespaces/apps/secrets";

fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/apps/deployments/{name}")
}
fn service_path(name: &str) -> String {
    format!("/api/v1/namespaces/apps/services/{name}")
}

fn policy(finalized: bool) -> AuthPolicy {
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

fn route(service: &str) -> HTTPRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "hello", "namespace": "apps"},
        "spec": {"hostnames": ["hello.example.com"], "rules": [{"backendRefs": [{"name": service, "port": 80}]}]},
    }))
    .unwrap()
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "apps"},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
    }))
    .unwrap()
}

fn deployment(name: &str, app: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "apps", "generation": 1},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}}, "template": {
            "metadata": {"labels": {"app": app}},
            "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }))
    .unwrap()
}

fn world() -> Snapshot {
    let mut w = Snapshot::new();
    w.add_route(route("hello"))
        .add_service(service("hello", "hello"))
        .add_deployment(deployment("hello", "hello"));
    w
}

/// What the API server holds after our apply, with the rollout finished.
fn applied_deployment(d: &Deployment, sent: &Sent) -> Deployment {
    let mut v = serde_json::to_value(d).unwrap();
    merge::merge(&mut v, &sent.body);
    v["metadata"]["generation"] = json!(d.metadata.generation.unwrap() + 1);
    v["status"]["observedGeneration"] = v["metadata"]["generation"].clone();
    serde_json::from_value(v).unwrap()
}

fn applied_service(s: &Service, sent: &Sent) -> Service {
    let mut v = serde_json::to_value(s).unwrap();
    merge::merge(&mut v, &sent.body);
    serde_json::from_value(v).unwrap()
}

fn with_status(mut p: AuthPolicy, sent: &Sent) -> AuthPolicy {
    p.status = Some(serde_json::from_value(sent.body["status"].clone()).unwrap());
    p
}

fn find<'a>(sent: &'a [Sent], method: Method, path: &str) -> &'a Sent {
    sent.iter()
        .find(|s| s.method == method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", lines(sent)))
}

/// The condition of `type_` in a status patch.
fn status_condition<'a>(p: &'a Sent, type_: &str) -> &'a Value {
    p.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {}", p.body))
}

fn condition_message(p: &Sent, type_: &str) -> String {
    status_condition(p, type_)["message"].as_str().unwrap().to_string()
}

fn condition(p: &Sent, type_: &str) -> (String, String) {
    let c = status_condition(p, type_);
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

/// Drives the standard scenario to its steady state: finalizer, secret, Deployment, then
/// (after the rollout) the Service.
async fn converge() -> (Snapshot, AuthPolicy) {
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
    let (w, mut p) = converge().await;
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", service_path("hello")),
            format!("PATCH {}", deployment_path("hello")),
            format!("POST {EVENTS}"),
            format!("PATCH {POLICY}"),
        ]
    );
    assert_eq!(sent[0].body["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(sent[1].body.as_object().unwrap().len(), 3);
    assert_eq!(sent[3].body, json!({"metadata": {"finalizers": [], "resourceVersion": "10"}}));

    // Already cleaned up (finalizer gone): nothing to do.
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

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off_exponentially() {
    let failing: Responder = Box::new(|s: &Sent| {
        if s.path.contains("/deployments/") {
            (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError"))
        } else if s.path.ends_with("/secrets") {
            (StatusCode::CONFLICT, status_error(409, "AlreadyExists"))
        } else {
            reply(s)
        }
    });
    let (res, sent, ctx) = run(&world(), &policy(true), failing).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("apply Deployment apps/hello"), "{err}");
    // The 409 on the secret (another replica made it) was fine; the status was not written
    // because the reconcile stopped at the failed apply.
    assert_eq!(
        lines(&sent),
        [format!("POST {SECRETS}"), format!("PATCH {}", deployment_path("hello"))]
    );
    let p = Arc::new(policy(true));
    let delays: Vec<Action> = (0..4).map(|_| reconcile::error_policy(p.clone(), &err, ctx.clone())).collect();
    assert_eq!(
        delays,
        [1, 2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s))),
        "1 s doubling (capped at 5 min)"
    );
    assert_eq!(reconcile::backoff(20), Duration::from_secs(300));
    assert!(
        ctx.metrics
            .encode()
            .contains("sidekey_controller_reconcile_errors_total{reason=\"api_500\"} 4")
    );
}

fn failing(part: &'static str) -> Responder {
    Box::new(move |s: &Sent| {
        if s.path.contains(part) {
            (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError"))
        } else {
            reply(s)
        }
    })
}

#[tokio::test]
async fn a_failed_write_backs_off_on_its_own_failures_not_on_the_writes_before_it() {
    // The rollout's writes failing in turn, as under a flaky API server: the Deployment apply
    // three times, then (the Deployment applied) the Service apply.
    let (res, _, ctx) = run(&world(), &policy(true), failing("/deployments/")).await;
    let deployment_failed = res.unwrap_err();
    // The Deployment apply goes through and rolls out; then the Service apply fails.
    let (res, sent, _) = run(&world(), &policy(true), echo()).await;
    res.unwrap();
    let mut rolled_out = world();
    rolled_out
        .add_deployment(applied_deployment(
            &deployment("hello", "hello"),
            find(&sent, Method::PATCH, &deployment_path("hello")),
        ))
        .add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let (res, sent, _) = run(&rolled_out, &p, failing("/services/")).await;
    let service_failed = res.unwrap_err();
    assert_eq!(lines(&sent), [format!("PATCH {}", service_path("hello"))]);

    let p = Arc::new(p);
    let retry = |e: &reconcile::Error| reconcile::error_policy(p.clone(), e, ctx.clone());
    let deployment_retries: Vec<Action> = (0..3).map(|_| retry(&deployment_failed)).collect();
    assert_eq!(deployment_retries, [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s))));
    // No success came in between (the reconcile that applied the Deployment failed at the
    // Service), yet the Service apply has failed once: it is retried in 1 s, not in 8 s.
    // Nothing else would reconcile the policy meanwhile (the failed write sends no watch
    // event), so an inherited backoff left the Service unswitched for minutes.
    let service_retries: Vec<Action> = (0..2).map(|_| retry(&service_failed)).collect();
    assert_eq!(service_retries, [1, 2].map(|s| Action::requeue(Duration::from_secs(s))));
}

/// The Service as a GitOps sync leaves it: our annotations kept, the targetPort put back.
fn reverted(svc: &Service) -> Service {
    let mut s = svc.clone();
    s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()));
    s
}

fn reverts_annotation(sent: &Sent) -> Value {
    serde_json::from_str(sent.body["metadata"]["annotations"]["sidekey.dev/reverts"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_targetport_fight_is_detected_reported_and_not_looped() {
    let (mut w, mut p) = converge().await;
    let mut svc = sidekey_controller::cache::Cache::service(&w, &ObjKey::new("apps", "hello"))
        .map(|s| s.as_ref().clone())
        .unwrap();
    // Reverted three times: each time switched back, the count kept on the Service.
    for n in 1..=3 {
        w.add_service(reverted(&svc));
        let (res, sent, _) = run(&w, &p, echo()).await;
        res.unwrap();
        assert_eq!(lines(&sent), [format!("PATCH {}", service_path("hello"))], "revert {n}");
        assert_eq!(sent[0].body["spec"]["ports"][0]["targetPort"], "sidekey-http");
        assert_eq!(reverts_annotation(&sent[0])["count"], n);
        svc = applied_service(&reverted(&svc), &sent[0]);
    }
    // The fourth: sidekey stops re-applying and says why, once.
    w.add_service(reverted(&svc));
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent), [format!("PATCH {POLICY_STATUS}"), format!("POST {EVENTS}")]);
    assert_eq!(condition(&sent[0], "Ready"), ("False".into(), "ServiceReverted".into()));
    let ready = condition_message(&sent[0], "Ready");
    for needle in [
        "apps/hello",
        "4 times",
        "WITHOUT authentication",
        "managedFieldsManagers",
        "docs/gitops-argocd.md",
    ] {
        assert!(ready.contains(needle), "{needle} in {ready}");
    }
    assert_eq!(sent[0].body["status"]["protected"], 0);
    assert_eq!(sent[1].body["type"], "Warning");
    assert_eq!(sent[1].body["reason"], "ServiceReverted");
    // Every later resync: nothing written, no restore of the Service either.
    p = with_status(p, &sent[0]);
    for _ in 0..3 {
        let (res, sent, _) = run(&w, &p, echo()).await;
        res.unwrap();
        assert!(sent.is_empty(), "held: {:?}", lines(&sent));
    }
    // Once the window has passed, sidekey tries again (the count restarts).
    let mut old = reverted(&svc);
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(11);
    old.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("sidekey.dev/reverts".into(), json!({"count": 3, "since": since}).to_string());
    w.add_service(old);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent)[0], format!("PATCH {}", service_path("hello")));
    assert_eq!(reverts_annotation(&sent[0])["count"], 1);
}

#[tokio::test]
async fn conflicts_and_server_errors_on_writes_are_retried_until_they_converge() {
    // Every write fails twice (409 on the status, 500 elsewhere) before it succeeds; the
    // reconcile fails, backs off, and the next attempt resumes where it stopped.
    let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, u32>::new()));
    let flaky = |attempts: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>| -> Responder {
        Box::new(move |s: &Sent| {
            if s.path.ends_with("/events") {
                return reply(s);
            }
            let mut a = attempts.lock().unwrap();
            let n = a.entry(format!("{} {}", s.method, s.path)).or_insert(0);
            *n += 1;
            match *n {
                1 if s.path.ends_with("/status") => (StatusCode::CONFLICT, status_error(409, "Conflict")),
                1 | 2 => (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError")),
                _ => reply(s),
            }
        })
    };
    let mut w = world();
    let mut p = policy(false);
    let mut rounds = 0;
    let mut failures = 0;
    loop {
        rounds += 1;
        assert!(rounds < 20, "did not converge");
        let (res, sent, _) = run(&w, &p, flaky(attempts.clone())).await;
        // Feed back what the server accepted, as the watch would.
        for s in sent.iter().filter(|s| s.method == Method::PATCH) {
            let ok = attempts.lock().unwrap()[&s.line()] > 2 || (s.path.ends_with("/status") && attempts.lock().unwrap()[&s.line()] > 1);
            if !ok {
                continue;
            }
            if s.path == POLICY {
                p.metadata.finalizers = Some(vec!["sidekey.dev/cleanup".into()]);
            } else if s.path == POLICY_STATUS {
                p = with_status(p, s);
            } else if s.path == deployment_path("hello") {
                w.add_deployment(applied_deployment(&deployment("hello", "hello"), s));
            } else if s.path == service_path("hello") {
                w.add_service(applied_service(&service("hello", "hello"), s));
            }
        }
        if sent
            .iter()
            .any(|s| s.method == Method::POST && s.path == SECRETS && attempts.lock().unwrap()[&s.line()] > 2)
        {
            w.add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
        }
        match res {
            Ok(_) if sent.is_empty() => break,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("apps/hello"), "{e}");
            }
        }
    }
    assert!(failures >= 5, "each write failed before it succeeded ({failures} failed rounds)");
    let ready = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "Ready", "converged after {rounds} rounds");
}

#[tokio::test]
async fn a_deployment_deleted_mid_reconcile_is_reported_then_forgotten() {
    let (mut w, p) = converge().await;
    // The policy changes, so the sidecar is re-applied, but the Deployment is gone by then:
    // server-side apply of a missing object is a 404 (we never create workloads).
    let mut p2 = p.clone();
    p2.spec.access.allowed_groups.push("g2".into());
    p2.metadata.generation = Some(2);
    let gone: Responder = Box::new(|s: &Sent| {
        if s.path.contains("/deployments/") {
            (StatusCode::NOT_FOUND, status_error(404, "NotFound"))
        } else {
            reply(s)
        }
    });
    let (res, sent, _) = run(&w, &p2, gone).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("Deployment apps/hello"), "{err}");
    assert_eq!(lines(&sent), [format!("PATCH {}", deployment_path("hello"))]);
    // The watch then shows it gone: the next reconcile restores the Service it fronted and
    // says the target is missing, without touching the Deployment again.
    w.remove_deployment(&ObjKey::new("apps", "hello"));
    let (res, sent, _) = run(&w, &p2, echo()).await;
    res.unwrap();
    assert!(!lines(&sent).iter().any(|l| l.contains("/deployments/")), "{:?}", lines(&sent));
    let status = find(&sent, Method::PATCH, POLICY_STATUS);
    assert_eq!(condition(status, "Ready").0, "False");
}

#[tokio::test]
async fn deleting_the_policy_mid_rollout_cleans_up_and_drops_the_finalizer() {
    // The sidecar is applied but the rollout has not finished: the Service was never switched.
    let mut w = world();
    let (_, sent, _) = run(&w, &policy(false), echo()).await;
    let mut p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let mut d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    d.status.as_mut().unwrap().updated_replicas = Some(0);
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", deployment_path("hello")),
            format!("POST {EVENTS}"),
            format!("PATCH {POLICY}"),
        ],
        "no Service restore (it was never switched), the sidecar released, the finalizer dropped"
    );
    assert_eq!(sent[0].body.as_object().unwrap().len(), 3, "an empty apply releases our fields");
    assert_eq!(sent[2].body["metadata"]["finalizers"], json!([]));
}

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
    let (w, mut p) = converge().await;
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
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
