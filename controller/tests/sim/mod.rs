//! A simulated API server for the controller loop, shared by the scale benchmark
//! (`controller/examples/scale.rs`) and the loop test (`controller/tests/controller_loop.rs`).
//! It keeps every object, answers writes as the API server does (merge patches with
//! resourceVersion checks, server-side apply, creates with 409), finishes each Deployment
//! rollout at once, and feeds every change back through the watch streams that
//! [`runtime::controller`] runs on: the real reflectors, watch mappings, kube's scheduler
//! and the reconciler, with only the API server simulated.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::runtime::watcher::{self, Event};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sidekey_controller::api::AuthPolicy;
use sidekey_controller::cache::{Cache, ObjKey};
use sidekey_controller::gateway::{HTTPRoute, ReferenceGrant};
use sidekey_controller::merge;
use sidekey_controller::metrics::{Metrics, ResultLabels};
use sidekey_controller::plan;
use sidekey_controller::render::{RenderOptions, SidecarMode};
use sidekey_controller::runtime::{self, Sources};
use sidekey_controller::validate::validate;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Live heap bytes, when the binary installs [`Counting`] as its allocator.
pub static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// The most live heap bytes at any moment.
pub static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// mimalloc, counting live bytes.
pub struct Counting;

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let live = LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed) + layout.size() as u64;
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let live = LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed) + new_size as u64;
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

const BACKENDS: usize = 5;
const POLICIES_PER_NAMESPACE: usize = 10;
/// No write for this long, with every policy Ready, is convergence.
const QUIET: Duration = Duration::from_secs(1);

/// A watch stream's wire: objects travel as JSON and are decoded when the controller polls
/// the stream, as kube decodes a watch body. (Queueing decoded objects would charge the
/// controller for a backlog that a real watch keeps in the socket and the API server.)
type Feed = UnboundedSender<Event<Box<[u8]>>>;

struct Feeds {
    policies: Feed,
    routes: Feed,
    services: Feed,
    deployments: Feed,
    secrets: Feed,
}

/// The simulated API server's objects. Services and Deployments are kept as JSON, as the
/// API server keeps them in etcd: typed copies of 5,000 of each would weigh more than the
/// controller being measured.
#[derive(Default)]
struct World {
    policies: BTreeMap<ObjKey, AuthPolicy>,
    routes: BTreeMap<ObjKey, HTTPRoute>,
    services: BTreeMap<ObjKey, Box<[u8]>>,
    deployments: BTreeMap<ObjKey, Box<[u8]>>,
    secrets: BTreeMap<ObjKey, Secret>,
}

struct ApiServer {
    world: Mutex<World>,
    feeds: Feeds,
    version: AtomicU64,
    /// Writes that took, by kind and verb.
    writes: Mutex<BTreeMap<String, u64>>,
    /// Writes refused (409 conflicts, already exists).
    refused: AtomicU64,
    events: AtomicU64,
    last_write: Mutex<Instant>,
    faults: Faults,
    /// Write requests seen, and how many of them were failed on purpose.
    write_requests: AtomicU64,
    injected: AtomicU64,
    /// Write requests seen per `Faults::fail_first` suffix.
    targeted: Mutex<BTreeMap<&'static str, u64>>,
}

/// Faults the simulated server injects.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// Fail every n-th write request (0: none): a 409 Conflict for policy patches, a 500
    /// for everything else. Nothing is written.
    pub fail_every: u64,
    /// Restart every watch (a relist, as after a dropped watch or a 410 Gone) once half the
    /// policies are Ready.
    pub restart_watches_midway: bool,
    /// Targeted faults: the first `n` write requests to a path ending in `suffix` fail (409 or
    /// 500 as with `fail_every`), the ones after succeed.
    pub fail_first: &'static [(&'static str, u64)],
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("objects serialize")
}

fn from_value<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-formed object")
}

fn from_json<T: DeserializeOwned>(b: &[u8]) -> T {
    serde_json::from_slice(b).expect("a well-formed object")
}

fn json_bytes(v: &Value) -> Box<[u8]> {
    serde_json::to_vec(v).expect("objects serialize").into()
}

/// A JSON merge patch (RFC 7386), what `Patch::Merge` sends: objects merge, `null`
/// deletes, anything else (lists included) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), pv);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).expect("a status code"),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": reason, "code": code}),
    )
}

impl ApiServer {
    fn next_version(&self) -> String {
        (self.version.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    fn wrote(&self, what: &str) {
        *self.writes.lock().unwrap().entry(what.to_string()).or_default() += 1;
        *self.last_write.lock().unwrap() = Instant::now();
    }

    fn total_writes(&self) -> u64 {
        self.writes.lock().unwrap().values().sum()
    }

    fn handle(&self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let fail = |api: &ApiServer| {
            api.injected.fetch_add(1, Ordering::Relaxed);
            if path.contains("/authpolicies/") {
                status(409, "Conflict")
            } else {
                status(500, "InternalError")
            }
        };
        if matches!(*method, Method::PATCH | Method::POST)
            && let Some((suffix, n)) = self.faults.fail_first.iter().find(|(suffix, _)| path.ends_with(suffix))
        {
            let mut seen = self.targeted.lock().unwrap();
            let seen = seen.entry(*suffix).or_default();
            *seen += 1;
            if *seen <= *n {
                return fail(self);
            }
        }
        if self.faults.fail_every > 0 && !path.contains("/events") && matches!(*method, Method::PATCH | Method::POST) {
            let n = self.write_requests.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.faults.fail_every) {
                return fail(self);
            }
        }
        let mut world = self.world.lock().unwrap();
        match (method, parts.as_slice()) {
            (&Method::PATCH, ["apis", "sidekey.dev", "v1alpha1", "namespaces", ns, "authpolicies", name, rest @ ..]) => {
                let key = ObjKey::new(*ns, *name);
                let Some(p) = world.policies.get_mut(&key) else {
                    return status(404, "NotFound");
                };
                let mut v = to_value(&*p);
                let is_status = rest == ["status"];
                if !is_status
                    && let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != p.metadata.resource_version.as_deref()
                {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return status(409, "Conflict");
                }
                let mut patch = body.clone();
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge_patch(&mut v, &patch);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *p = from_value(v.clone());
                let _ = self.feeds.policies.send(Event::Apply(json_bytes(&v)));
                self.wrote(if is_status { "AuthPolicy/status" } else { "AuthPolicy/patch" });
                (StatusCode::OK, v)
            }
            (&Method::POST, ["api", "v1", "namespaces", ns, "secrets"]) => {
                let mut v = body.clone();
                let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = ObjKey::new(*ns, name);
                if world.secrets.contains_key(&key) {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return status(409, "AlreadyExists");
                }
                // The API server turns stringData into data.
                if let Some(sd) = v.as_object_mut().and_then(|o| o.remove("stringData")) {
                    let data: serde_json::Map<String, Value> = sd
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, s)| {
                            let b = base64::engine::general_purpose::STANDARD.encode(s.as_str().unwrap_or_default());
                            (k.clone(), json!(b))
                        })
                        .collect();
                    v["data"] = Value::Object(data);
                }
                v["metadata"]["namespace"] = json!(ns);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                let secret: Secret = from_value(v.clone());
                world.secrets.insert(key, secret.clone());
                let _ = self.feeds.secrets.send(Event::Apply(json_bytes(&v)));
                self.wrote("Secret/create");
                (StatusCode::CREATED, v)
            }
            (&Method::PATCH, ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
                let Some(d) = world.deployments.get_mut(&ObjKey::new(*ns, *name)) else {
                    return status(404, "NotFound");
                };
                let before: Value = from_json(d);
                let mut v = before.clone();
                merge::merge(&mut v, body);
                if v["spec"] != before["spec"] {
                    let generation = before["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    v["metadata"]["generation"] = json!(generation);
                    // The rollout finishes at once.
                    v["status"]["observedGeneration"] = json!(generation);
                    v["status"]["updatedReplicas"] = v["spec"]["replicas"].clone();
                    v["status"]["availableReplicas"] = v["spec"]["replicas"].clone();
                }
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *d = json_bytes(&v);
                let _ = self.feeds.deployments.send(Event::Apply(json_bytes(&v)));
                self.wrote("Deployment/apply");
                (StatusCode::OK, v)
            }
            (&Method::PATCH, ["api", "v1", "namespaces", ns, "services", name]) => {
                let Some(s) = world.services.get_mut(&ObjKey::new(*ns, *name)) else {
                    return status(404, "NotFound");
                };
                let mut v: Value = from_json(s);
                merge::merge(&mut v, body);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *s = json_bytes(&v);
                let _ = self.feeds.services.send(Event::Apply(json_bytes(&v)));
                self.wrote("Service/apply");
                (StatusCode::OK, v)
            }
            (&Method::POST | &Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", ..]) => {
                self.events.fetch_add(1, Ordering::Relaxed);
                (StatusCode::OK, body.clone())
            }
            _ => status(404, "NotFound"),
        }
    }

    /// Every watch relists, as after a watch restart: Init, every object, InitDone.
    fn relist(&self) {
        let world = self.world.lock().unwrap();
        fn feed(tx: &Feed, objects: impl Iterator<Item = Box<[u8]>>) {
            let _ = tx.send(Event::Init);
            for o in objects {
                let _ = tx.send(Event::InitApply(o));
            }
            let _ = tx.send(Event::InitDone);
        }
        fn typed<K: Serialize>(objects: &BTreeMap<ObjKey, K>) -> impl Iterator<Item = Box<[u8]>> + '_ {
            objects.values().map(|o| json_bytes(&to_value(o)))
        }
        feed(&self.feeds.policies, typed(&world.policies));
        feed(&self.feeds.routes, typed(&world.routes));
        feed(&self.feeds.services, world.services.values().cloned());
        feed(&self.feeds.deployments, world.deployments.values().cloned());
        feed(&self.feeds.secrets, typed(&world.secrets));
    }

    fn ready_policies(&self) -> usize {
        let world = self.world.lock().unwrap();
        world
            .policies
            .values()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == p.metadata.generation)
                })
            })
            .count()
    }
}

fn world(policies: usize) -> World {
    let mut w = World::default();
    for i in 0..policies {
        let ns = format!("team-{}", i / POLICIES_PER_NAMESPACE);
        let app = format!("app-{i}");
        let backends: Vec<Value> = (0..BACKENDS).map(|b| json!({"name": format!("{app}-{b}"), "port": 80})).collect();
        let route: HTTPRoute = from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": app, "namespace": ns, "resourceVersion": "1"},
            "spec": {"hostnames": [format!("{app}.example.com")], "rules": [{"backendRefs": backends}]},
        }));
        w.routes.insert(ObjKey::of(&route), route);
        let policy: AuthPolicy = from_value(json!({
            "apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": app, "namespace": ns, "uid": format!("uid-{i}"), "generation": 1, "resourceVersion": "1",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": app}],
                "provider": {"type": "entra-id", "issuerURL": "https://login.microsoftonline.com/tenant-1/v2.0", "clientID": "client-1", "workloadIdentity": {}},
                "access": {"allowedGroups": ["g1"]},
            },
        }));
        w.policies.insert(ObjKey::of(&policy), policy);
        for b in 0..BACKENDS {
            let name = format!("{app}-{b}");
            let service = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
            });
            w.services.insert(ObjKey::new(&ns, &name), json_bytes(&service));
            let deployment = json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "generation": 1, "resourceVersion": "1"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "registry.example.com/app:1.0",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}},
                "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
            });
            w.deployments.insert(ObjKey::new(&ns, &name), json_bytes(&deployment));
        }
    }
    w
}

fn peak_rss_kib() -> u64 {
    rss_kib("VmHWM:")
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn reconciles(metrics: &Metrics) -> u64 {
    metrics.reconciles.get_or_create(&ResultLabels { result: "ok".into() }).get()
}

/// Waits until `done` holds and no write came for [`QUIET`]; returns when `done` first
/// held, or `None` at `limit`.
async fn wait_quiet(api: &ApiServer, done: impl Fn() -> bool, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    let mut first_done = None;
    let mut report = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if report.elapsed() >= Duration::from_secs(5) {
            report = Instant::now();
            eprintln!(
                "scale: {} writes ({:?}), {} ready",
                api.total_writes(),
                api.writes.lock().unwrap(),
                api.ready_policies()
            );
        }
        if done() {
            let at = *first_done.get_or_insert_with(Instant::now);
            if api.last_write.lock().unwrap().elapsed() >= QUIET {
                return Some(at);
            }
        } else {
            first_done = None;
        }
    }
    None
}

/// Runs `policies` AuthPolicies (5 Deployments each) from cold to converged, then a full
/// resync, then the pure core alone; returns the measurements as JSON.
pub async fn scale_run(policies: usize) -> Value {
    scale_run_with(policies, Faults::default()).await
}

pub async fn scale_run_with(policies: usize, faults: Faults) -> Value {
    let w = world(policies);
    let (objects_kib, rss_world_kib) = {
        let bytes: usize = w.deployments.values().chain(w.services.values()).map(|o| o.len()).sum();
        (bytes / 1024, peak_rss_kib())
    };

    let (ptx, prx) = unbounded_channel();
    let (rtx, rrx) = unbounded_channel();
    let (stx, srx) = unbounded_channel();
    let (dtx, drx) = unbounded_channel();
    let (xtx, xrx) = unbounded_channel();
    let api = Arc::new(ApiServer {
        world: Mutex::new(w),
        feeds: Feeds {
            policies: ptx,
            routes: rtx,
            services: stx,
            deployments: dtx,
            secrets: xtx,
        },
        version: AtomicU64::new(100),
        writes: Mutex::default(),
        refused: AtomicU64::new(0),
        events: AtomicU64::new(0),
        last_write: Mutex::new(Instant::now()),
        faults,
        write_requests: AtomicU64::new(0),
        injected: AtomicU64::new(0),
        targeted: Mutex::default(),
    });

    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = api.clone();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = server.handle(&parts.method, parts.uri.path(), &body);
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });

    fn stream<K: DeserializeOwned + Send + 'static>(
        rx: tokio::sync::mpsc::UnboundedReceiver<Event<Box<[u8]>>>,
    ) -> impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static {
        futures_util::stream::unfold(rx, |mut rx| async move {
            let event = match rx.recv().await? {
                Event::Apply(o) => Event::Apply(from_json(&o)),
                Event::Delete(o) => Event::Delete(from_json(&o)),
                Event::Init => Event::Init,
                Event::InitApply(o) => Event::InitApply(from_json(&o)),
                Event::InitDone => Event::InitDone,
            };
            Some((Ok(event), rx))
        })
    }
    let sources = Sources {
        policies: stream(prx),
        services: stream(srx),
        deployments: stream(drx),
        secrets: stream(xrx),
        routes: Some(stream(rrx)),
        grants: None::<futures_util::stream::Empty<Result<Event<ReferenceGrant>, watcher::Error>>>,
    };
    let metrics = Arc::new(Metrics::default());
    let opts = RenderOptions {
        proxy_image: "ghcr.io/sidekey-dev/sidekey-proxy:v0.1.0".into(),
        mode: SidecarMode::Native,
        service_account_issuer: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (cache, running) = runtime::controller(sources, kube::Client::new(mock, "default"), opts.clone(), metrics.clone(), async {
        let _ = stopped.await;
    });
    let controller = tokio::spawn(running);

    // Cold start: every watch lists its objects, then the controller converges.
    let started = Instant::now();
    let world_heap_kib = LIVE_BYTES.load(Ordering::Relaxed) / 1024;
    PEAK_BYTES.store(0, Ordering::Relaxed);
    api.relist();
    let restarted = faults.restart_watches_midway.then(|| {
        let api = api.clone();
        tokio::spawn(async move {
            while api.ready_policies() < policies / 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            api.relist();
        })
    });
    let converged = wait_quiet(
        &api,
        || api.ready_policies() == policies,
        Duration::from_secs(30) + Duration::from_millis(200) * policies as u32,
    )
    .await
    .is_some();
    let converge_s = (*api.last_write.lock().unwrap() - started).as_secs_f64();
    let cold_writes = api.writes.lock().unwrap().clone();
    let cold_total = api.total_writes();
    let refused = api.refused.load(Ordering::Relaxed);
    let events = api.events.load(Ordering::Relaxed);
    let reconciles_cold = reconciles(&metrics);
    let watches_restarted = match restarted {
        Some(t) => t.await.is_ok(),
        None => false,
    };

    // Full resync: every watch relists; every policy reconciles again and must write nothing.
    let before = reconciles(&metrics);
    let resync_started = Instant::now();
    api.relist();
    let resynced = wait_quiet(&api, || reconciles(&metrics) >= before + policies as u64, Duration::from_secs(300)).await;
    let resync_s = resynced.map(|at| (at - resync_started).as_secs_f64());
    let resync_writes = api.total_writes() - cold_total;

    // The pure core alone over the converged cache: resolve + render + diff of every policy.
    let now = jiff::Timestamp::now();
    let all = cache.policies();
    let core_started = Instant::now();
    let mut planned_writes = 0;
    for p in &all {
        let plan = plan::plan(plan::Input {
            sidecar_failures: &Default::default(),
            policy: p,
            cache: &cache,
            opts: &opts,
            validation: validate(p),
            assume_rolled_out: false,
            now,
        });
        planned_writes += plan.writes();
    }
    let core_us = core_started.elapsed().as_secs_f64() * 1e6 / all.len().max(1) as f64;

    // The controller's own steady state: drop the simulated server's copies of everything
    // (mimalloc returns freed pages to the OS after about a second).
    let ready = api.ready_policies();
    *api.world.lock().unwrap() = World::default();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let controller_rss_kib = rss_kib("VmRSS:");
    let controller_heap_kib = LIVE_BYTES.load(Ordering::Relaxed) / 1024;

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;

    // The least any controller could write: per policy a finalizer, the cookie Secret, one
    // apply per Deployment and per Service, and two statuses (rolling out, then Ready).
    let minimum = (policies * (1 + 1 + 2 * BACKENDS + 2)) as u64;
    json!({
            "id": "controller-scale",
            "policies": policies,
            "deployments": policies * BACKENDS,
            "converged": converged,
            "converge_s": converge_s,
            "ready": ready,
            "writes": cold_total,
            "writes_by_kind": cold_writes,
            "minimum_writes": minimum,
            "refused_writes": refused,
            "injected_failures": api.injected.load(Ordering::Relaxed),
            "watches_restarted": watches_restarted,
            "events": events,
            "reconciles": reconciles_cold,
            "resync_completed": resynced.is_some(),
            "resync_s": resync_s,
            "resync_writes": resync_writes,
            "core_us_per_policy": core_us,
            "core_planned_writes": planned_writes,
            "peak_rss_kib": peak_rss_kib(),
            "world_rss_kib": rss_world_kib,
            "world_objects_kib": objects_kib,
            "controller_rss_kib": controller_rss_kib,
            "controller_heap_kib": controller_heap_kib,
            "peak_heap_kib": PEAK_BYTES.load(Ordering::Relaxed) / 1024,
            "world_heap_kib": world_heap_kib,
    })
}
