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

mod api_server;
pub use api_server::Faults;
use api_server::*;

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
    // What the caches alone hold: the controller has stopped, and only its caches (kept
    // here) are left of it.
    let stopped_heap_kib = LIVE_BYTES.load(Ordering::Relaxed) / 1024;
    drop(all);
    drop(cache);
    let caches_heap_kib = stopped_heap_kib.saturating_sub(LIVE_BYTES.load(Ordering::Relaxed) / 1024);

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
            "caches_heap_kib": caches_heap_kib,
            "peak_heap_kib": PEAK_BYTES.load(Ordering::Relaxed) / 1024,
            "world_heap_kib": world_heap_kib,
    })
}
