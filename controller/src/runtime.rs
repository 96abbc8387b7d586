//! Watches, caches, the controller loop, leader election and the health/metrics endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::deployment::Deployment;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::api::AuthPolicy;
use crate::cache::Kind;
use crate::cache::{Cache, ObjKey, StoreIndex, annotated_by};
use crate::gateway::{HTTPRoute, ReferenceGrant};
use crate::metrics::Metrics;
use crate::policy_index::Index;
use crate::reconcile::{self, Context};
use crate::render::{RenderOptions, SidecarMode};
use crate::write_gate::{GateLayer, WriteGate};

mod health;
pub mod leader;
mod live_cache;
use health::serve_health;
pub use health::{Phase, Stopping, readyz};
pub use live_cache::{Listing, LiveCache};
use live_cache::{digest_secret, indexed, slim_service};

/// Reconciles in flight at once. Each holds its rendered patches and the API's answers;
/// unbounded, a cold start of 1,000 policies held them all at the same time (a heap peak
/// of 176 MB in the scale run). Reconciles are CPU-light and the writes are what take the
/// time, so 16 keep the API busy without that peak.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// How often a controller started without Gateway API checks whether it was installed.
pub const CRD_POLL: Duration = Duration::from_secs(30);

/// How often a leader without the AuthPolicy CRD looks for it again.
pub const POLICY_CRD_POLL: Duration = Duration::from_secs(5);

/// Returns once the AuthPolicy CRD is served, or `false` on a stop signal first. Without it
/// every AuthPolicy watch fails with 404 for ever and the caches never sync: say so once, in
/// the log and in `/readyz`, and carry on when it appears, without a restart (a reinstall
/// after a failed one installs the CRD after the controller is up).
async fn wait_for_policy_crd(client: &Client, ready: &AtomicU8, stopping: &Stopping) -> bool {
    let api: Api<AuthPolicy> = Api::all(client.clone());
    let mut missing = false;
    let mut failing = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {
                if missing {
                    tracing::info!("the AuthPolicy CRD is installed now: starting");
                    ready.store(Phase::Starting as u8, Ordering::Relaxed);
                }
                return true;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !missing {
                    tracing::error!(
                        "the AuthPolicy CRD (authpolicies.sidekey.dev) is not installed: apply crds/sidekey.dev_authpolicies.yaml, or install the chart with crds.install=true; waiting for it (checked every {}s)",
                        POLICY_CRD_POLL.as_secs()
                    );
                    ready.store(Phase::NoPolicyCrd as u8, Ordering::Relaxed);
                    missing = true;
                }
            }
            // The API server briefly away, or RBAC missing (403): the same wait, said once.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot list AuthPolicies; retrying every {}s", POLICY_CRD_POLL.as_secs());
                failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot list AuthPolicies yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLICY_CRD_POLL) => {}
            () = stopping.wait() => return false,
        }
    }
}

/// Resolves once listing `api` works: its CRD is installed (and served). Other errors (the
/// API server briefly away) are retried like a 404.
pub async fn wait_until_installed<K>(api: &Api<K>, every: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    loop {
        tokio::time::sleep(every).await;
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "HTTPRoute CRD not available yet"),
        }
    }
}

/// `--sidecar-mode`: a mode, or `auto` to pick one by the server's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarSetting {
    Auto,
    Fixed(SidecarMode),
}

impl SidecarSetting {
    /// The flag's values, as `--help` lists them.
    pub const VALUES: [&str; 3] = ["auto", "native", "regular"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(SidecarSetting::Auto),
            "native" => Some(SidecarSetting::Fixed(SidecarMode::Native)),
            "regular" => Some(SidecarSetting::Fixed(SidecarMode::Regular)),
            _ => None,
        }
    }
}

pub struct Settings {
    pub proxy_image: String,
    pub sidecar_mode: SidecarSetting,
    pub metrics_address: SocketAddr,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub identity: leader::Holder,
}

/// `auto` picks native sidecars on Kubernetes ≥ 1.29.
pub fn sidecar_mode(setting: SidecarSetting, version: Option<(u32, u32)>) -> SidecarMode {
    match setting {
        SidecarSetting::Fixed(mode) => mode,
        SidecarSetting::Auto => match version {
            Some((major, minor)) if major == 1 && minor < 29 => SidecarMode::Regular,
            _ => SidecarMode::Native,
        },
    }
}

pub fn parse_version(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<(u32, u32)> {
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok();
    Some((digits(&info.major)?, digits(&info.minor)?))
}

/// Why [`run`] ended without being asked to. `main` turns each into the process's exit.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on --metrics-address {addr}: {source}")]
    MetricsAddress { addr: SocketAddr, source: std::io::Error },
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// Another replica holds the Lease: this one stopped writing and ends, so the new leader
    /// runs alone (the kubelet restarts it as a standby).
    #[error("lost leadership: another replica holds the Lease")]
    LostLeadership,
}

impl RunError {
    /// The exit status: 2 for a setting to fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::MetricsAddress { .. } | RunError::KubeConfig(_) => 2,
            RunError::Api(_) | RunError::LostLeadership => 1,
        }
    }
}

pub async fn run(settings: Settings) -> Result<(), RunError> {
    let gate = if settings.leader_election {
        WriteGate::closed()
    } else {
        WriteGate::always_open()
    };
    let client = kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?
        .with_layer(&GateLayer(gate.clone()))
        .build();
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicU8::new(Phase::Starting as u8));
    let stopping = Stopping::on_signals();
    let addr = settings.metrics_address;
    let health = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::MetricsAddress { addr, source })?;
    tokio::spawn(serve_health(health, metrics.clone(), ready.clone()));

    let version = client.apiserver_version().await.ok();
    let mode = sidecar_mode(settings.sidecar_mode, version.as_ref().and_then(parse_version));
    tracing::info!(server = ?version.as_ref().map(|v| v.git_version.clone()), mode = ?mode, "connected to the API server");
    if mode == SidecarMode::Regular {
        tracing::warn!("native sidecars need Kubernetes 1.29 or newer: injecting sidekey-proxy as a regular container");
    }

    if settings.leader_election {
        ready.store(Phase::Standby as u8, Ordering::Relaxed);
        tokio::select! {
            () = leader::acquire(&client, &settings.lease_namespace, &settings.identity, &gate) => {}
            () = stopping.wait() => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        }
        ready.store(Phase::Starting as u8, Ordering::Relaxed);
    }
    // Ends only when another replica has taken the Lease (with this replica's writes stopped).
    let (lost_tx, lost) = tokio::sync::oneshot::channel::<()>();
    let renewing = settings.leader_election.then(|| {
        let renew = leader::renew(
            client.clone(),
            settings.lease_namespace.clone(),
            settings.identity.clone(),
            gate.clone(),
        );
        tokio::spawn(async move {
            renew.await;
            let _ = lost_tx.send(());
        })
    });

    if !wait_for_policy_crd(&client, &ready, &stopping).await {
        tracing::info!("stopped while waiting for the AuthPolicy CRD");
        if let Some(renewing) = renewing {
            renewing.abort();
            gate.close();
            leader::release(&client, &settings.lease_namespace, &settings.identity).await;
        }
        return Ok(());
    }

    let routes_api: Api<HTTPRoute> = Api::all(client.clone());
    let routes_installed = match routes_api.list(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::warn!(
                "the HTTPRoute CRD (Gateway API) is not installed: serving Service targets only until it is (checked every {}s)",
                CRD_POLL.as_secs()
            );
            false
        }
        Err(e) => return Err(e.into()),
    };
    // Watches are fixed at start: once Gateway API appears, stop cleanly and let the
    // Deployment start a fresh process that watches HTTPRoutes too.
    let (installed, crd_appeared) = tokio::sync::oneshot::channel::<()>();
    if !routes_installed {
        let routes_api = routes_api.clone();
        tokio::spawn(async move {
            wait_until_installed(&routes_api, CRD_POLL).await;
            let _ = installed.send(());
        });
    }
    let shutdown = {
        let (client, gate, stopping) = (client.clone(), gate.clone(), stopping.clone());
        let (namespace, identity) = (settings.lease_namespace.clone(), settings.identity.clone());
        async move {
            tokio::select! {
                () = stopping.wait() => {}
                Ok(()) = crd_appeared => {
                    tracing::info!("the HTTPRoute CRD is now installed: restarting to watch HTTPRoutes");
                }
            }
            // Hand the Lease over first: on `helm uninstall` our RBAC is deleted at the same
            // time, and a release attempted after the reconciles have drained may be refused,
            // leaving the next install to wait out a stale Lease. Writes stop before the
            // release so the next leader never overlaps with this one.
            if let Some(renewing) = renewing {
                renewing.abort();
                gate.close();
                // Its own task: the controller's shutdown future must be Sync, a request is not.
                let _ = tokio::spawn(async move { leader::release(&client, &namespace, &identity).await }).await;
            }
        }
    };
    let grants_installed = routes_installed
        && Api::<ReferenceGrant>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
            .is_ok();

    // The server ends each watch after 30 s and the client gives up on a silent one after
    // 35 s (kube adds 5 s), instead of 290/295 s: against a real API server restarted under
    // it, a watch opened during the outage hung without an error, and the controller missed
    // the rollout it was waiting for until that watch was abandoned.
    let wc = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let sources = Sources {
        policies: watcher(Api::<AuthPolicy>::all(client.clone()), wc.clone()),
        services: watcher(Api::<Service>::all(client.clone()), wc.clone()),
        deployments: watcher(Api::<Deployment>::all(client.clone()), wc.clone()),
        secrets: watcher(Api::<Secret>::all(client.clone()), wc.clone()),
        routes: routes_installed.then(|| watcher(Api::<HTTPRoute>::all(client.clone()), wc.clone())),
        grants: grants_installed.then(|| watcher(Api::<ReferenceGrant>::all(client.clone()), wc.clone())),
    };
    let opts = RenderOptions {
        proxy_image: settings.proxy_image.clone(),
        mode,
        service_account_issuer: service_account_issuer(&client).await,
    };
    let (cache, running) = controller(sources, client.clone(), opts, metrics.clone(), shutdown);

    let readiness = {
        let cache = cache.clone();
        let ready = ready.clone();
        async move {
            cache.wait_synced().await;
            ready.store(Phase::Reconciling as u8, Ordering::Relaxed);
            tracing::info!("caches synced; reconciling");
        }
    };
    tokio::spawn(readiness);
    tokio::select! {
        () = running => {}
        Ok(()) = lost => return Err(RunError::LostLeadership),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Lets errors through at once: the streams it wraps pace their own retries.
pub struct NoExtraBackoff;

impl Iterator for NoExtraBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoExtraBackoff {
    fn reset(&mut self) {}
}

/// Server-side timeout of every watch (seconds). A re-watch from the last resourceVersion is
/// cheap: six watches every 30 s.
pub const WATCH_TIMEOUT_SECS: u32 = 30;

/// How long a broken watch waits before it reconnects: 250 ms, doubling to at most 4 s, with
/// ±25% jitter, and back to 250 ms after any event. kube's default climbs to 30 s and only
/// resets after 2 minutes of calm; after a 10 s API-server restart (measured against a real
/// one) some watches then slept ~30 s, came back to a 410 Expired, slept again before
/// relisting, and the controller was blind for about a minute. One watch per resource type
/// reconnecting every 4 s is no load for an API server.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        Some(base.mul_f64(jitter))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// The cluster's service-account issuer, from its OIDC discovery document (readable by every
/// ServiceAccount through the default `system:service-account-issuer-discovery` binding,
/// and granted explicitly in the chart). `None`, logged, when it cannot be read: the status
/// then says where to look instead.
pub async fn service_account_issuer(client: &Client) -> Option<String> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .expect("request");
    let issuer = match client.request_text(request).await {
        Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|doc| doc["issuer"].as_str().map(str::to_string))
            .filter(|i| !i.is_empty()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster's OIDC discovery document; the status will show how to find the issuer");
            return None;
        }
    };
    match &issuer {
        Some(i) => tracing::info!(issuer = %i, "service-account issuer"),
        None => tracing::warn!("the cluster's OIDC discovery document names no issuer"),
    }
    issuer
}

/// The watch streams the controller runs on: the API server's watches in production, a
/// simulated API server in the scale benchmark (`controller/examples/scale.rs`). `routes`
/// and `grants` are `None` when their CRDs are not installed.
pub struct Sources<P, S, D, X, R, G> {
    pub policies: P,
    pub services: S,
    pub deployments: D,
    pub secrets: X,
    pub routes: Option<R>,
    pub grants: Option<G>,
}

/// A stream of watch events for `K`, as [`watcher`] yields them.
pub trait WatchStream<K>: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {}
impl<K, T> WatchStream<K> for T where T: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {}

/// Wires the reflector caches, the watch-to-policy mappings and the reconciler onto
/// `sources`. Returns the caches and the controller loop, which runs until `shutdown`.
pub fn controller<P, S, D, X, R, G>(
    sources: Sources<P, S, D, X, R, G>,
    client: Client,
    opts: RenderOptions,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (LiveCache, impl std::future::Future<Output = ()>)
where
    P: WatchStream<AuthPolicy>,
    S: WatchStream<Service>,
    D: WatchStream<Deployment>,
    X: WatchStream<Secret>,
    R: WatchStream<HTTPRoute>,
    G: WatchStream<ReferenceGrant>,
{
    let (policies, pw) = reflector::store();
    let (services, sw) = reflector::store();
    let (deployments, dw) = reflector::store();
    let (secrets, xw) = reflector::store();
    let (routes, rw) = reflector::store();
    let (grants, gw) = reflector::store();

    let kinds = 4 + usize::from(sources.routes.is_some()) + usize::from(sources.grants.is_some());
    let (listing, synced) = Listing::new(kinds);
    let policy_stream = listing
        .track(reflector::reflector(pw, sources.policies))
        .backoff(WatchBackoff::default())
        .touched_objects();
    let service_index = Arc::new(RwLock::new(StoreIndex::default()));
    let deployment_index = Arc::new(RwLock::new(StoreIndex::default()));
    // Managed fields are most of an object's size and never read: not kept in memory.
    let service_stream = listing
        .track(indexed(
            reflector::reflector(sw, sources.services.modify(slim_service)),
            services.clone(),
            service_index.clone(),
        ))
        .backoff(WatchBackoff::default())
        .touched_objects();
    let deployment_stream = listing
        .track(indexed(
            reflector::reflector(dw, sources.deployments),
            deployments.clone(),
            deployment_index.clone(),
        ))
        .backoff(WatchBackoff::default())
        .touched_objects();
    let secret_stream = listing
        .track(reflector::reflector(xw, sources.secrets.modify(digest_secret)))
        .backoff(WatchBackoff::default())
        .touched_objects();

    let cache = LiveCache {
        policies: policies.clone(),
        routes: sources.routes.is_some().then(|| routes.clone()),
        grants: sources.grants.is_some().then(|| grants.clone()),
        services: services.clone(),
        deployments: deployments.clone(),
        secrets: secrets.clone(),
        service_index,
        deployment_index,
        synced,
    };
    let index = Arc::new(Index::default());
    let ctx = Arc::new(Context::new(client, Arc::new(cache.clone()), opts, metrics, index.clone()));

    let mut controller = Controller::for_stream(policy_stream, policies.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        // Each watch above already backs off on its own errors. kube's Controller adds one
        // more backoff over all of them together (up to 30 s, reset after 2 minutes), so
        // after an API-server restart one stream's errors held back every other stream's
        // events: the rollout the controller waited for arrived over a minute late.
        .trigger_backoff(NoExtraBackoff)
        .watches_stream(service_stream, {
            let index = index.clone();
            move |s: Service| to_refs(index.policies_touching(Kind::Service, &ObjKey::of(&s)))
        })
        .watches_stream(deployment_stream, {
            let index = index.clone();
            let cache = cache.clone();
            move |d: Deployment| {
                let same_ns = cache.services_in(d.metadata.namespace.as_deref().unwrap_or_default());
                to_refs(policies_for_deployment(&index, &same_ns, &d))
            }
        })
        .watches_stream(secret_stream, {
            let index = index.clone();
            move |s: Secret| to_refs(index.policies_touching(Kind::Secret, &ObjKey::of(&s)))
        });
    if let Some(route_source) = sources.routes {
        let route_stream = listing
            .track(reflector::reflector(rw, route_source))
            .backoff(WatchBackoff::default())
            .touched_objects();
        let index = index.clone();
        controller = controller.watches_stream(route_stream, move |r: HTTPRoute| {
            to_refs(index.policies_touching(Kind::Route, &ObjKey::of(&r)))
        });
    }
    if let Some(grant_source) = sources.grants {
        let grant_stream = listing
            .track(reflector::reflector(gw, grant_source))
            .backoff(WatchBackoff::default())
            .touched_objects();
        let policies = policies.clone();
        // Rare and cross-namespace: re-check every policy.
        controller = controller.watches_stream(grant_stream, move |_: ReferenceGrant| {
            policies.state().iter().map(|p| ObjectRef::from(p.as_ref())).collect::<Vec<_>>()
        });
    }
    let running = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        });
    (cache, running)
}

/// The policies a Deployment change concerns: those that resolved to it last time, and those
/// that look at a Service now selecting it (a new Deployment, or changed pod labels).
pub fn policies_for_deployment(index: &Index, services: &[Arc<Service>], d: &Deployment) -> Vec<ObjKey> {
    let key = ObjKey::of(d);
    let selecting: Vec<ObjKey> = services.iter().filter(|s| selects(s, d)).map(|s| ObjKey::of(s.as_ref())).collect();
    let mut out: BTreeSet<ObjKey> = index.policies_touching(Kind::Deployment, &key).into_iter().collect();
    for s in &selecting {
        out.extend(index.policies_touching(Kind::Service, s));
    }
    out.into_iter().collect()
}

fn to_refs(keys: Vec<ObjKey>) -> Vec<ObjectRef<AuthPolicy>> {
    keys.into_iter().map(|k| ObjectRef::new(&k.name).within(&k.namespace)).collect()
}

fn selects(s: &Service, d: &Deployment) -> bool {
    let selector = s.spec.as_ref().and_then(|s| s.selector.as_ref());
    let labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    match (selector, labels) {
        (Some(sel), Some(l)) if !sel.is_empty() => sel.iter().all(|(k, v)| l.get(k) == Some(v)),
        _ => false,
    }
}
