//! Runtime pieces that decide behaviour: sidecar mode by server version, watch-event mapping,
//! leader election against a scenario-checked mock API.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::client::Body;
use serde_json::{Value, json};
use sidekey_controller::api::AuthPolicy;
use sidekey_controller::cache::{ObjKey, Snapshot, StoreIndex};
use sidekey_controller::deployment::Deployment;
use sidekey_controller::expectations::{Expectations, Kind};
use sidekey_controller::policy_index::Index;
use sidekey_controller::render::SidecarMode;
use sidekey_controller::resolve::{self, Touched};
use sidekey_controller::runtime::{Phase, SidecarSetting, leader, parse_version, policies_for_deployment, readyz, sidecar_mode};

#[test]
fn sidecar_mode_follows_the_server_version() {
    let info = |major: &str, minor: &str| k8s_openapi::apimachinery::pkg::version::Info {
        major: major.into(),
        minor: minor.into(),
        ..Default::default()
    };
    assert_eq!(parse_version(&info("1", "28+")), Some((1, 28)), "EKS/GKE minors carry a +");
    assert_eq!(
        sidecar_mode(SidecarSetting::Auto, parse_version(&info("1", "28+"))),
        SidecarMode::Regular
    );
    assert_eq!(
        sidecar_mode(SidecarSetting::Auto, parse_version(&info("1", "29"))),
        SidecarMode::Native
    );
    assert_eq!(
        sidecar_mode(SidecarSetting::Auto, parse_version(&info("1", "37"))),
        SidecarMode::Native
    );
    assert_eq!(
        sidecar_mode(SidecarSetting::Auto, None),
        SidecarMode::Native,
        "unknown version: the supported default"
    );
    assert_eq!(
        sidecar_mode(SidecarSetting::Fixed(SidecarMode::Regular), Some((1, 33))),
        SidecarMode::Regular
    );
    assert_eq!(
        sidecar_mode(SidecarSetting::Fixed(SidecarMode::Native), Some((1, 27))),
        SidecarMode::Native
    );
}

#[test]
fn a_standby_replica_is_ready_so_rolling_updates_finish() {
    assert_eq!(readyz(Phase::Starting as u8).0, 503, "the leader's caches are still filling");
    assert_eq!(readyz(Phase::Standby as u8).0, 200, "waiting for the Lease is a healthy state");
    assert_eq!(readyz(Phase::Reconciling as u8), (200, "ok\n"));
    let (code, body) = readyz(Phase::NoPolicyCrd as u8);
    assert_eq!(code, 503, "a leader without its CRD cannot do its job");
    assert!(body.starts_with("AuthPolicy CRD not installed"), "{body}");
}

fn svc(name: &str, app: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "apps"}, "spec": {"selector": {"app": app}, "ports": [{"port": 80}]}}),
        )
        .unwrap(),
    )
}

fn dep(name: &str, app: &str) -> Deployment {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "apps"}, "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": app}}}}}))
        .unwrap()
}

#[test]
fn deployment_events_reach_the_policies_that_care() {
    let index = Index::default();
    index.set(
        ObjKey::new("apps", "p1"),
        Touched {
            services: [ObjKey::new("apps", "web")].into(),
            deployments: [ObjKey::new("apps", "web")].into(),
            ..Default::default()
        },
    );
    index.set(
        ObjKey::new("apps", "p2"),
        Touched {
            services: [ObjKey::new("apps", "api")].into(),
            ..Default::default()
        },
    );
    let services = [svc("web", "web"), svc("api", "api")];
    // Known Deployment.
    assert_eq!(
        policies_for_deployment(&index, &services, &dep("web", "web")),
        [ObjKey::new("apps", "p1")]
    );
    // A new Deployment whose pods the api Service selects: p2 looked at that Service.
    assert_eq!(
        policies_for_deployment(&index, &services, &dep("api-v2", "api")),
        [ObjKey::new("apps", "p2")]
    );
    // Unrelated.
    assert!(policies_for_deployment(&index, &services, &dep("batch", "batch")).is_empty());

    // A policy's new reconcile replaces what it touched: the old objects no longer map to it.
    index.set(
        ObjKey::new("apps", "p1"),
        Touched {
            services: [ObjKey::new("apps", "api")].into(),
            ..Default::default()
        },
    );
    assert!(policies_for_deployment(&index, &services, &dep("web", "web")).is_empty());
    assert_eq!(
        index.policies_touching(Kind::Service, &ObjKey::new("apps", "api")),
        [ObjKey::new("apps", "p1"), ObjKey::new("apps", "p2")]
    );
    index.remove(&ObjKey::new("apps", "p2"));
    assert_eq!(
        index.policies_touching(Kind::Service, &ObjKey::new("apps", "api")),
        [ObjKey::new("apps", "p1")]
    );
}

fn meta(ns: &str, name: &str, policy: Option<&str>) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    serde_json::from_value(json!({
        "namespace": ns, "name": name,
        "annotations": policy.map(|p| json!({"sidekey.dev/policy": p})).unwrap_or(json!({})),
    }))
    .unwrap()
}

#[test]
fn the_store_index_follows_namespaces_and_our_annotation() {
    let mut ix = StoreIndex::default();
    ix.apply(&meta("a", "web", None));
    ix.apply(&meta("a", "api", Some("a/p")));
    ix.apply(&meta("b", "web", Some("a/p")));
    assert_eq!(
        ix.in_namespace("a"),
        [ObjKey::new("a", "api"), ObjKey::new("a", "web")],
        "sorted by name"
    );
    assert_eq!(ix.of_policy("a/p"), [ObjKey::new("a", "api"), ObjKey::new("b", "web")]);
    // The annotation moves to another policy, then goes.
    ix.apply(&meta("a", "api", Some("a/q")));
    assert_eq!(ix.of_policy("a/p"), [ObjKey::new("b", "web")]);
    assert_eq!(ix.of_policy("a/q"), [ObjKey::new("a", "api")]);
    ix.apply(&meta("a", "api", None));
    assert!(ix.of_policy("a/q").is_empty());
    ix.delete(&meta("b", "web", Some("a/p")));
    assert!(ix.of_policy("a/p").is_empty());
    assert!(ix.in_namespace("b").is_empty());
    // A relist: exactly what was listed.
    ix.rebuild([meta("c", "x", Some("c/p"))].iter());
    assert!(ix.in_namespace("a").is_empty());
    assert_eq!(ix.of_policy("c/p"), [ObjKey::new("c", "x")]);
}

#[test]
fn a_policy_waits_until_the_cache_shows_its_own_writes() {
    let policy = ObjKey::new("apps", "p");
    let mut cache = Snapshot::new();
    let mut d = dep("web", "web");
    d.metadata.resource_version = Some("5".into());
    cache.add_deployment(d.clone());
    let ex = Expectations::default();
    assert!(ex.met(&policy, &cache), "nothing written yet");
    // A write that changed nothing (same version back) expects nothing.
    ex.wrote(&policy, Kind::Deployment, &ObjKey::new("apps", "web"), Some("5".into()), Some("5"));
    assert!(ex.met(&policy, &cache));
    // A real write: stale until the cache holds another version.
    ex.wrote(&policy, Kind::Deployment, &ObjKey::new("apps", "web"), Some("5".into()), Some("6"));
    ex.wrote(&policy, Kind::Secret, &ObjKey::new("apps", "cookie"), None, None);
    assert!(!ex.met(&policy, &cache));
    assert!(ex.met(&ObjKey::new("apps", "other"), &cache), "per policy");
    d.metadata.resource_version = Some("6".into());
    cache.add_deployment(d);
    assert!(!ex.met(&policy, &cache), "the created Secret is not in the cache yet");
    cache.add_secret(ObjKey::new("apps", "cookie"), "digest");
    assert!(ex.met(&policy, &cache));
}

#[test]
fn without_the_httproute_crd_route_targets_say_so_and_service_targets_work() {
    let mut world = Snapshot::new();
    world.routes_available = false;
    let p: AuthPolicy = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "apps"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}, {"kind": "Service", "name": "web"}],
                 "provider": {"type": "oidc", "issuerURL": "https://i", "clientID": "c", "clientSecretRef": {"name": "s", "key": "k"}},
                 "access": {"emailDomains": ["x"]}},
    }))
    .unwrap();
    world.add_service(svc("web", "web").as_ref().clone());
    let mut d = dep("web", "web");
    d.spec.as_mut().unwrap().template.spec = Some(serde_json::from_value(json!({"containers": [{"name": "c"}]})).unwrap());
    world.add_deployment(d);
    let r = resolve::resolve(&p, &world);
    assert_eq!(r.workloads.len(), 1);
    let route = r.targets.iter().find(|t| t.route.as_deref() == Some("r")).unwrap();
    assert!(
        route.message.contains("HTTPRoute CRD (Gateway API) is not installed"),
        "{}",
        route.message
    );
}

/// A mock API server answering from a script of (expected method + path, reply).
async fn lease_scenario(script: Vec<(String, StatusCode, Value)>) -> (bool, Vec<Value>) {
    lease_scenario_as(script, None).await
}

/// As `pod-a`; with `pod_uid`, as a controller Pod that owns the Lease it holds.
async fn lease_scenario_as(script: Vec<(String, StatusCode, Value)>, pod_uid: Option<&str>) -> (bool, Vec<Value>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (want, code, reply) in script {
            let (req, respond) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(format!("{} {}", req.method(), req.uri().path()), want);
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        bodies
    });
    let api: Api<Lease> = Api::namespaced(kube::Client::new(mock, "default"), "sidekey-system");
    let me = leader::Holder {
        name: "pod-a".into(),
        pod_uid: pod_uid.map(String::from),
    };
    let won = leader::try_acquire(&api, &me).await.unwrap();
    drop(api);
    (won, server.await.unwrap())
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sidekey-system/leases";

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago);
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "sidekey-controller", "namespace": "sidekey-system", "resourceVersion": "7"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 2}})
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn leader_election_creates_a_missing_lease() {
    let (won, bodies) = lease_scenario(vec![
        (format!("GET {LEASE}/sidekey-controller"), StatusCode::NOT_FOUND, not_found()),
        (format!("POST {LEASE}"), StatusCode::CREATED, lease("pod-a", 0)),
    ])
    .await;
    assert!(won);
    assert_eq!(bodies[1]["spec"]["holderIdentity"], "pod-a");
}

/// In a cluster the holder Pod owns the Lease, so it is garbage-collected with the Pod when
/// `helm uninstall` has already removed the RBAC a release needs; a new holder takes it over.
#[tokio::test]
async fn the_holder_pod_owns_the_lease() {
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": "pod-a", "uid": "uid-a"}]);
    let (won, bodies) = lease_scenario_as(
        vec![
            (format!("GET {LEASE}/sidekey-controller"), StatusCode::NOT_FOUND, not_found()),
            (format!("POST {LEASE}"), StatusCode::CREATED, lease("pod-a", 0)),
        ],
        Some("uid-a"),
    )
    .await;
    assert!(won);
    assert_eq!(bodies[1]["metadata"]["ownerReferences"], owner);
    let mut held_by_b = lease("pod-b", 60);
    held_by_b["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod", "name": "pod-b", "uid": "uid-b"}]);
    let (won, bodies) = lease_scenario_as(
        vec![
            (format!("GET {LEASE}/sidekey-controller"), StatusCode::OK, held_by_b),
            (format!("PUT {LEASE}/sidekey-controller"), StatusCode::OK, lease("pod-a", 0)),
        ],
        Some("uid-a"),
    )
    .await;
    assert!(won, "pod-b's lease expired");
    assert_eq!(bodies[1]["metadata"]["ownerReferences"], owner, "the new holder owns it");
}

#[tokio::test]
async fn leader_election_respects_a_live_holder_and_takes_over_an_expired_one() {
    let get = || format!("GET {LEASE}/sidekey-controller");
    let put = || format!("PUT {LEASE}/sidekey-controller");
    let (won, _) = lease_scenario(vec![(get(), StatusCode::OK, lease("pod-b", 2))]).await;
    assert!(!won, "pod-b renewed 2 s ago: no request beyond the read");

    let (won, bodies) = lease_scenario(vec![
        (get(), StatusCode::OK, lease("pod-b", 60)),
        (put(), StatusCode::OK, lease("pod-a", 0)),
    ])
    .await;
    assert!(won);
    let spec = &bodies[1]["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseTransitions"], 3);
    assert_eq!(
        bodies[1]["metadata"]["resourceVersion"], "7",
        "a compare-and-swap on resourceVersion"
    );

    // Lost the race: the other replica replaced it first.
    let conflict =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"});
    let (won, _) = lease_scenario(vec![
        (get(), StatusCode::OK, lease("pod-b", 60)),
        (put(), StatusCode::CONFLICT, conflict),
    ])
    .await;
    assert!(!won);
}

#[tokio::test(start_paused = true)]
async fn a_controller_started_without_gateway_api_notices_when_it_is_installed() {
    use sidekey_controller::gateway::HTTPRoute;
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut asked = Vec::new();
        // Not installed, the API server briefly failing, not installed, then installed.
        for code in [404u16, 503, 404, 200] {
            let (req, respond) = handle.next_request().await.unwrap();
            asked.push((tokio::time::Instant::now(), format!("{} {}", req.method(), req.uri().path())));
            let reply = if code == 200 {
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRouteList", "metadata": {}, "items": []})
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": "NotFound", "message": "x"})
            };
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        asked
    });
    let api: Api<HTTPRoute> = Api::all(kube::Client::new(mock, "default"));
    let started = tokio::time::Instant::now();
    sidekey_controller::runtime::wait_until_installed(&api, sidekey_controller::runtime::CRD_POLL).await;
    assert_eq!(
        started.elapsed(),
        sidekey_controller::runtime::CRD_POLL * 4,
        "polled every 30 s, not hot"
    );
    drop(api);
    let asked = server.await.unwrap();
    assert_eq!(asked.len(), 4);
    assert!(asked.iter().all(|(_, a)| a == "GET /apis/gateway.networking.k8s.io/v1/httproutes"));
}

#[test]
fn broken_watches_retry_within_seconds_and_start_over_after_an_event() {
    use kube::runtime::utils::Backoff;
    use sidekey_controller::runtime::WatchBackoff;
    let mut b = WatchBackoff::default();
    let delays: Vec<Duration> = (&mut b).take(10).collect();
    assert!(delays[0] <= Duration::from_millis(320), "{delays:?}");
    assert!(
        delays.iter().all(|d| *d <= Duration::from_secs(5)),
        "capped at 4 s (+25% jitter): {delays:?}"
    );
    assert!(delays[9] >= Duration::from_secs(3), "it does back off: {delays:?}");
    b.reset();
    assert!(b.next().unwrap() <= Duration::from_millis(320));
}
