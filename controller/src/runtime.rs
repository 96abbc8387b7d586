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
use crate::cache::{Cache, ObjKey, StoreIndex, annotated_by};
use crate::gateway::{HTTPRoute, ReferenceGrant};
use crate::metrics::Metrics;
use crate::policy_index::{Index, Watched};
use crate::reconcile::{self, Context};
use crate::render::{RenderOptions, SidecarMode};
use crate::write_gate::{GateLayer, WriteGate};

/// The reflector stores, read through [`Cache`].
#[derive(Clone)]
pub struct LiveCache {
    pub policies: Store<AuthPolicy>,
    pub routes: Option<Store<HTTPRoute>>,
    pub grants: Option<Store<ReferenceGrant>>,
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub secrets: Store<Secret>,
    pub service_index: Arc<RwLock<StoreIndex>>,
    pub deployment_index: Arc<RwLock<StoreIndex>>,
    /// Turns true once every watched kind has been listed ([`Listing`]).
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl LiveCache {
    /// Resolves once every watched kind has been listed (HTTPRoutes and ReferenceGrants
    /// too, when watched).
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// The Services of `namespace`, by name.
    pub fn services_in(&self, namespace: &str) -> Vec<Arc<Service>> {
        let keys = self.service_index.read().expect("index lock").in_namespace(namespace);
        keys.iter().filter_map(|k| get(&self.services, k)).collect()
    }
}

/// Counts the watched kinds down to their first complete listing (`InitDone`, which the
/// reflector passes on after it has swapped the listed objects into its store).
///
/// Not kube's `Store::wait_until_ready`: its ready signal is a oneshot that remembers one
/// waiting task, and kube's own Controller already waits on the policy store. A second
/// waiter (our readiness check) could be the one never woken: against a real API server the
/// controller then hung before its first reconcile in 3 runs of 5, "became leader" but never
/// "caches synced" (/readyz 503 for ever).
#[derive(Clone)]
pub struct Listing {
    pending: Arc<std::sync::atomic::AtomicUsize>,
    synced: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Listing {
    pub fn new(kinds: usize) -> (Self, tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(kinds == 0);
        (
            Listing {
                pending: Arc::new(std::sync::atomic::AtomicUsize::new(kinds)),
                synced: Arc::new(tx),
            },
            rx,
        )
    }

    /// Passes `stream` through, counting its first `InitDone`.
    pub fn track<K, W>(&self, stream: W) -> impl futures_util::Stream<Item = W::Item> + Send + 'static
    where
        K: Send + 'static,
        W: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let listing = self.clone();
        let mut counted = false;
        stream.inspect(move |event| {
            if !counted && matches!(event, Ok(watcher::Event::InitDone)) {
                counted = true;
                if listing.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    listing.synced.send_replace(true);
                }
            }
        })
    }
}

/// Keeps `index` in step with the events of a stream whose reflector writes `store`.
fn indexed<K, W>(stream: W, store: Store<K>, index: Arc<RwLock<StoreIndex>>) -> impl futures_util::Stream<Item = W::Item> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    W: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    stream.inspect(move |event| {
        let mut index = index.write().expect("index lock");
        match event {
            Ok(watcher::Event::Apply(o)) => index.apply(o.meta()),
            Ok(watcher::Event::Delete(o)) => index.delete(o.meta()),
            // The reflector has swapped the relisted objects into the store.
            Ok(watcher::Event::InitDone) => index.rebuild(store.state().iter().map(|o| o.meta())),
            _ => {}
        }
    })
}

fn get<K>(store: &Store<K>, key: &ObjKey) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(&key.name).within(&key.namespace))
}

impl Cache for LiveCache {
    fn policies(&self) -> Vec<Arc<AuthPolicy>> {
        self.policies.state()
    }
    fn policy(&self, key: &ObjKey) -> Option<Arc<AuthPolicy>> {
        get(&self.policies, key)
    }
    fn policies_in(&self, namespace: &str) -> Vec<Arc<AuthPolicy>> {
        self.policies.state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
    }
    fn deployment(&self, key: &ObjKey) -> Option<Arc<Deployment>> {
        get(&self.deployments, key)
    }
    fn route(&self, key: &ObjKey) -> Option<Arc<HTTPRoute>> {
        get(self.routes.as_ref()?, key)
    }
    fn routes_available(&self) -> bool {
        self.routes.is_some()
    }
    fn grants_in(&self, namespace: &str) -> Vec<Arc<ReferenceGrant>> {
        self.grants
            .as_ref()
            .map(|g| g.state_filter(|g| g.metadata.namespace.as_deref() == Some(namespace)))
            .unwrap_or_default()
    }
    fn service(&self, key: &ObjKey) -> Option<Arc<Service>> {
        get(&self.services, key)
    }
    fn deployments_in(&self, namespace: &str) -> Vec<Arc<Deployment>> {
        let keys = self.deployment_index.read().expect("index lock").in_namespace(namespace);
        keys.iter().filter_map(|k| get(&self.deployments, k)).collect()
    }
    fn secret_digest(&self, key: &ObjKey) -> Option<String> {
        let s = get(&self.secrets, key)?;
        let data = s.data.as_ref()?;
        data.get(DIGEST_KEY).map(|v| String::from_utf8_lossy(&v.0).into_owned())
    }
    fn synced(&self) -> bool {
        *self.synced.borrow()
    }
    fn patched_by(&self, policy: &str) -> (Vec<Arc<Deployment>>, Vec<Arc<Service>>) {
        let deployments = self.deployment_index.read().expect("index lock").of_policy(policy);
        let services = self.service_index.read().expect("index lock").of_policy(policy);
        (
            deployments
                .iter()
                .filter_map(|k| get(&self.deployments, k))
                .filter(|d| annotated_by(d.as_ref(), policy))
                .collect(),
            services
                .iter()
                .filter_map(|k| get(&self.services, k))
                .filter(|s| annotated_by(s.as_ref(), policy))
                .collect(),
        )
    }
}

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

const DIGEST_KEY: &str = "sidekey.dev/digest";

/// Keeps only a digest of a Secret's data in memory: enough to roll pods on rotation,
/// without holding every Secret of the cluster in the controller.
fn digest_secret(s: &mut Secret) {
    let mut h = Sha256::new();
    for (k, v) in s.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(&v.0);
        h.update([0]);
    }
    let digest: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    s.data = Some(BTreeMap::from([(
        DIGEST_KEY.to_string(),
        k8s_openapi::ByteString(digest.into_bytes()),
    )]));
    s.string_data = None;
    s.metadata.managed_fields = None;
}

pub struct Settings {
    pub proxy_image: String,
    pub sidecar_mode: String,
    pub metrics_address: SocketAddr,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub identity: leader::Holder,
}

/// `auto` picks native sidecars on Kubernetes ≥ 1.29.
pub fn sidecar_mode(setting: &str, version: Option<(u32, u32)>) -> SidecarMode {
    match setting {
        "native" => SidecarMode::Native,
        "regular" => SidecarMode::Regular,
        _ => match version {
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
    let mode = sidecar_mode(&settings.sidecar_mode, version.as_ref().and_then(parse_version));
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
            reflector::reflector(sw, sources.services.modify(|s| s.metadata.managed_fields = None)),
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
            move |s: Service| to_refs(index.policies_touching(Watched::Service, &ObjKey::of(&s)))
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
            move |s: Secret| to_refs(index.policies_touching(Watched::Secret, &ObjKey::of(&s)))
        });
    if let Some(route_source) = sources.routes {
        let route_stream = listing
            .track(reflector::reflector(rw, route_source))
            .backoff(WatchBackoff::default())
            .touched_objects();
        let index = index.clone();
        controller = controller.watches_stream(route_stream, move |r: HTTPRoute| {
            to_refs(index.policies_touching(Watched::Route, &ObjKey::of(&r)))
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
    let mut out: BTreeSet<ObjKey> = index.policies_touching(Watched::Deployment, &key).into_iter().collect();
    for s in &selecting {
        out.extend(index.policies_touching(Watched::Service, s));
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

/// SIGTERM or Ctrl-C, seen in every state: registered before the first await, so a standby
/// waiting for the Lease stops at once too (as PID 1 of a container it would otherwise ignore
/// SIGTERM and wait for the kubelet's SIGKILL, 30 s later).
#[derive(Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    pub fn on_signals() -> Self {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        Stopping(rx)
    }

    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Where the process is, for `/readyz`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, or the leader filling its caches.
    Starting = 0,
    /// Waiting for the Lease while another replica leads.
    Standby = 1,
    /// Caches synced; reconciling.
    Reconciling = 2,
    /// The leader, waiting for the AuthPolicy CRD to be installed.
    NoPolicyCrd = 3,
}

/// A standby replica is ready: it is healthy and doing its job (waiting). Reporting it
/// unready would stall every rolling update of a 2-replica Deployment, since the new
/// pod could never become Ready while the old leader holds the Lease.
pub fn readyz(phase: u8) -> (u16, &'static str) {
    match phase {
        p if p == Phase::Reconciling as u8 => (200, "ok\n"),
        p if p == Phase::Standby as u8 => (200, "standby: another replica holds the Lease\n"),
        p if p == Phase::NoPolicyCrd as u8 => (
            503,
            "AuthPolicy CRD not installed: kubectl apply --server-side -f crds/sidekey.dev_authpolicies.yaml\n",
        ),
        _ => (503, "caches not synced\n"),
    }
}

async fn serve_health(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicU8>) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, service::service_fn};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = match req.uri().path() {
                    "/metrics" => (StatusCode::OK, metrics.encode()),
                    "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                    "/readyz" => {
                        let (code, body) = readyz(ready.load(Ordering::Relaxed));
                        (StatusCode::from_u16(code).expect("status"), body.to_string())
                    }
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(bytes::Bytes::from(body)))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Leader election on a `coordination.k8s.io` Lease, client-go style: acquire when free or
/// expired, renew every 5 s, and end [`run`] if another replica took the Lease (the kubelet
/// restarts this one as a follower). Optimistic concurrency (resourceVersion) makes two replicas never
/// both win. A renewal that cannot reach the API server does not end the process: the
/// [`WriteGate`] stops this replica's writes before the Lease could expire, and the next
/// successful renewal reopens it.
pub mod leader {
    use super::*;

    pub const LEASE_NAME: &str = "sidekey-controller";

    /// Who holds the Lease: the Pod's name, and in a cluster its uid, which makes the Pod the
    /// Lease's owner. `helm uninstall` deletes the RBAC in the same pass as the Deployment,
    /// so the leader's own release on SIGTERM is refused (403) on a real node; as a dependent
    /// of the holder Pod, the Lease goes with it instead of naming a gone holder for ever.
    #[derive(Clone, Debug)]
    pub struct Holder {
        pub name: String,
        pub pod_uid: Option<String>,
    }

    impl Holder {
        fn owner(&self) -> Option<serde_json::Value> {
            let uid = self.pod_uid.as_deref().filter(|u| !u.is_empty())?;
            Some(serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": uid}]))
        }
    }
    pub const DURATION: i32 = 15;
    /// Writes stop this long before the Lease could expire in another replica's eyes: room
    /// for the renewal's own latency and for clock skew between the replicas.
    const MARGIN: Duration = Duration::from_secs(3);
    const RENEW_EVERY: Duration = Duration::from_secs(5);
    const RETRY_EVERY: Duration = Duration::from_secs(2);

    fn validity() -> Duration {
        Duration::from_secs(DURATION as u64) - MARGIN
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn expired(l: &Lease) -> bool {
        let Some(spec) = &l.spec else { return true };
        match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => t.0 + jiff::SignedDuration::from_secs(d as i64) < jiff::Timestamp::now(),
            _ => true,
        }
    }

    /// One attempt: true when `me` holds the lease afterwards.
    pub async fn try_acquire(api: &Api<Lease>, holder: &Holder) -> Result<bool, kube::Error> {
        let me = holder.name.as_str();
        let owners = holder.owner();
        let lease = match api.get_opt(LEASE_NAME).await? {
            Some(l) => l,
            None => {
                let l: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": LEASE_NAME, "ownerReferences": owners},
                    "spec": {"holderIdentity": me, "leaseDurationSeconds": DURATION, "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0},
                }))
                .expect("lease shape");
                return match api.create(&PostParams::default(), &l).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != me && !holder.is_empty() && !expired(&lease) {
            return Ok(false);
        }
        let mut next = lease.clone();
        if let Some(o) = owners {
            next.metadata.owner_references = Some(serde_json::from_value(o).expect("owner reference shape"));
        }
        let s = next.spec.get_or_insert_with(Default::default);
        if holder != me {
            s.acquire_time = Some(now());
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        s.holder_identity = Some(me.into());
        s.lease_duration_seconds = Some(DURATION);
        s.renew_time = Some(now());
        match api.replace(LEASE_NAME, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns once `me` holds the Lease (retrying every 2 s while another replica does).
    pub async fn acquire(client: &Client, ns: &str, me: &Holder, gate: &WriteGate) {
        let api: Api<Lease> = Api::namespaced(client.clone(), ns);
        tracing::info!(lease = LEASE_NAME, namespace = ns, identity = me.name, "waiting for leadership");
        loop {
            let sent = std::time::Instant::now();
            match try_acquire(&api, me).await {
                Ok(true) => {
                    gate.renewed(sent, validity());
                    tracing::info!(identity = me.name, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews the Lease until another replica has taken it: then closes the gate and returns.
    pub async fn renew(client: Client, ns: String, me: Holder, gate: WriteGate) {
        let api: Api<Lease> = Api::namespaced(client, &ns);
        let mut failing = false;
        loop {
            tokio::time::sleep(if failing { RETRY_EVERY } else { RENEW_EVERY }).await;
            let sent = std::time::Instant::now();
            match try_acquire(&api, &me).await {
                Ok(true) => {
                    gate.renewed(sent, validity());
                    if failing {
                        tracing::info!("lease renewed again; writes resume");
                    }
                    failing = false;
                }
                Ok(false) => {
                    gate.close();
                    return;
                }
                Err(e) => {
                    if !failing || !gate.is_open() {
                        tracing::warn!(error = %e, writes_paused = !gate.is_open(), "renewing the lease");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Hands over at once on a clean shutdown instead of making the other replica wait out the lease.
    /// Refused when the RBAC went first (`helm uninstall`): then the Lease goes with this
    /// Pod, its owner, or the next leader waits out its 15 s.
    pub async fn release(client: &Client, ns: &str, me: &Holder) {
        let api: Api<Lease> = Api::namespaced(client.clone(), ns);
        let result = match api.get_opt(LEASE_NAME).await {
            Ok(Some(mut l)) if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me.name.as_str()) => {
                let s = l.spec.get_or_insert_with(Default::default);
                s.holder_identity = None;
                s.lease_duration_seconds = Some(1);
                api.replace(LEASE_NAME, &PostParams::default(), &l).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::info!("released the lease"),
            Err(e) if me.owner().is_some() => {
                tracing::info!(error = %e, "could not release the lease; it is deleted with this Pod, its owner")
            }
            Err(e) => tracing::warn!(error = %e, "could not release the lease; the next leader waits for it to expire"),
        }
    }
}
