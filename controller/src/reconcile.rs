//! The I/O shell: executes a [`Plan`] against the API server, and undoes everything when a
//! policy is deleted. Every request is a write (reads come from the cache), which is what the
//! mock-API tests count.

use crate::names::{ANNOTATION_POLICY, COOKIE_SECRET_KEY, FIELD_MANAGER, FINALIZER, LABEL_POLICY_NAME};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::deployment::Deployment;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use serde_json::json;
use thiserror::Error;

use crate::api::AuthPolicy;
use crate::cache::{Cache, ObjKey};
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use crate::render::{self, RenderOptions};
use crate::resolve::Touched;
use crate::validate::validate;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{action} {kind} {key}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The write that failed (`apply Service ns/name`), without the server's answer.
    pub fn write(&self) -> String {
        match self {
            Error::Api { action, kind, key, .. } => format!("{action} {kind} {key}"),
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Error::Api { source, .. } => match source {
                kube::Error::Api(s) => format!("api_{}", s.code),
                _ => "transport".into(),
            },
        }
    }
}

fn api_err(action: &'static str, kind: &'static str, key: &ObjKey) -> impl FnOnce(kube::Error) -> Error + use<> {
    let key = key.to_string();
    move |source| Error::Api { action, kind, key, source }
}

/// Which policies looked at which objects in their last reconcile, so that a watch event on
/// any of them re-queues exactly those policies. Kept both ways: a watch event looks up its
/// object instead of scanning every policy (at 1,000 policies and thousands of events
/// during a rollout, the scan dominated).
#[derive(Default)]
pub struct Index {
    inner: Mutex<IndexInner>,
}

#[derive(Default)]
struct IndexInner {
    touched: HashMap<ObjKey, Touched>,
    routes: HashMap<ObjKey, BTreeSet<ObjKey>>,
    services: HashMap<ObjKey, BTreeSet<ObjKey>>,
    deployments: HashMap<ObjKey, BTreeSet<ObjKey>>,
    secrets: HashMap<ObjKey, BTreeSet<ObjKey>>,
}

/// What kind of object a watch event is about, for [`Index::policies_touching`].
#[derive(Clone, Copy, Debug)]
pub enum Watched {
    Route,
    Service,
    Deployment,
    Secret,
}

impl IndexInner {
    fn reverse(&mut self, policy: &ObjKey, t: &Touched, add: bool) {
        for (map, keys) in [
            (&mut self.routes, &t.routes),
            (&mut self.services, &t.services),
            (&mut self.deployments, &t.deployments),
            (&mut self.secrets, &t.secrets),
        ] {
            for k in keys {
                if add {
                    map.entry(k.clone()).or_default().insert(policy.clone());
                } else if let Some(ps) = map.get_mut(k) {
                    ps.remove(policy);
                    if ps.is_empty() {
                        map.remove(k);
                    }
                }
            }
        }
    }
}

impl Index {
    pub fn set(&self, policy: ObjKey, touched: Touched) {
        let mut inner = self.inner.lock().expect("index lock");
        if let Some(old) = inner.touched.remove(&policy) {
            inner.reverse(&policy, &old, false);
        }
        inner.reverse(&policy, &touched, true);
        inner.touched.insert(policy, touched);
    }
    pub fn remove(&self, policy: &ObjKey) {
        let mut inner = self.inner.lock().expect("index lock");
        if let Some(old) = inner.touched.remove(policy) {
            inner.reverse(policy, &old, false);
        }
    }
    /// The policies whose last reconcile looked at `key`, sorted.
    pub fn policies_touching(&self, kind: Watched, key: &ObjKey) -> Vec<ObjKey> {
        let inner = self.inner.lock().expect("index lock");
        let map = match kind {
            Watched::Route => &inner.routes,
            Watched::Service => &inner.services,
            Watched::Deployment => &inner.deployments,
            Watched::Secret => &inner.secrets,
        };
        map.get(key).map(|ps| ps.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Writes whose watch event has not reached the cache yet (kube-controller-manager's
/// "expectations"). At scale the watches lag seconds behind a burst of writes; a reconcile
/// that read the stale copies would write again: a Service applied twice, a status going
/// Ready, RolloutPending, Ready. So a policy with an unobserved write waits for it.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<ObjKey, Vec<Expected>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Deployment,
    Service,
    Secret,
}

struct Expected {
    kind: Kind,
    key: ObjKey,
    /// The version the cache held before the write; `None` for a create.
    stale: Option<String>,
    since: Instant,
}

/// How long to wait for a watch event before trusting the cache anyway (a lost event must
/// not stall a policy).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(15);

impl Expectations {
    /// Records a write by `policy`: the cache is stale until it holds a version other than
    /// `before`. A write that did not change the object (same version back) expects nothing.
    pub fn wrote(&self, policy: &ObjKey, kind: Kind, key: &ObjKey, before: Option<String>, after: Option<&str>) {
        if before.is_some() && before.as_deref() == after {
            return;
        }
        self.inner
            .lock()
            .expect("expectations lock")
            .entry(policy.clone())
            .or_default()
            .push(Expected {
                kind,
                key: key.clone(),
                stale: before,
                since: Instant::now(),
            });
    }

    /// Whether every write of `policy` has reached `cache` (met expectations are dropped).
    pub fn met(&self, policy: &ObjKey, cache: &dyn Cache) -> bool {
        let mut inner = self.inner.lock().expect("expectations lock");
        let Some(list) = inner.get_mut(policy) else { return true };
        list.retain(|e| {
            let version = match e.kind {
                Kind::Policy => cache.policy(&e.key).map(|o| o.metadata.resource_version.clone()),
                Kind::Deployment => cache.deployment(&e.key).map(|o| o.metadata.resource_version.clone()),
                Kind::Service => cache.service(&e.key).map(|o| o.metadata.resource_version.clone()),
                Kind::Secret => cache.secret_digest(&e.key).map(|_| None),
            };
            let observed = match (&e.stale, version) {
                (None, v) => v.is_some(),
                // Gone counts as observed: the next plan sees that.
                (Some(stale), v) => v.is_none_or(|v| v.as_ref() != Some(stale)),
            };
            !observed && e.since.elapsed() < EXPECTATION_TIMEOUT
        });
        let done = list.is_empty();
        if done {
            inner.remove(policy);
        }
        done
    }

    pub fn forget(&self, policy: &ObjKey) {
        self.inner.lock().expect("expectations lock").remove(policy);
    }
}

/// How soon a policy waiting for its own writes to show in the cache looks again.
const EXPECTATION_POLL: Duration = Duration::from_millis(200);
/// How soon a policy looks again while the caches are still being listed.
const CACHE_SYNC_POLL: Duration = Duration::from_millis(200);

pub struct Context {
    pub client: Client,
    pub cache: Arc<dyn Cache + Send + Sync>,
    pub opts: RenderOptions,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub index: Arc<Index>,
    pub expectations: Expectations,
    failures: Mutex<HashMap<ObjKey, Failing>>,
}

/// The write a policy's reconciles keep failing at, and how many times in a row.
struct Failing {
    write: String,
    count: u32,
}

impl Context {
    pub fn new(client: Client, cache: Arc<dyn Cache + Send + Sync>, opts: RenderOptions, metrics: Arc<Metrics>, index: Arc<Index>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            cache,
            opts,
            recorder,
            metrics,
            index,
            expectations: Expectations::default(),
            failures: Mutex::default(),
        }
    }
}

pub async fn reconcile(policy: Arc<AuthPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjKey::of(policy.as_ref());
    // kube starts reconciling once the policies are listed; a route or Deployment not
    // listed yet would look deleted and its protection would be undone (seen on every
    // leader failover against a real cluster). Wait for every kind.
    if !ctx.cache.synced() {
        return Ok(Action::requeue(CACHE_SYNC_POLL));
    }
    if !ctx.expectations.met(&key, ctx.cache.as_ref()) {
        return Ok(Action::requeue(EXPECTATION_POLL));
    }
    // The policy as the cache holds it now: the copy kube handed over may predate our own
    // last write to it.
    let policy = ctx.cache.policy(&key).unwrap_or(policy);
    let started = Instant::now();
    let result = if policy.metadata.deletion_timestamp.is_some() {
        cleanup(&policy, &ctx).await
    } else {
        apply(&policy, &ctx).await
    };
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabels { result: label.into() })
        .inc();
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key);
    }
    result
}

/// Exponential backoff (1 s doubling to 5 min) for the write a reconcile stopped at. It grows
/// while that same write keeps failing and starts over when a reconcile fails at another one
/// (the earlier write went through, or is no longer needed); a success resets it. Counting
/// every failure of the policy instead let transient errors on earlier writes, each retried
/// fine, push the retry of a later one out to minutes: a failed Service apply sends no watch
/// event, so nothing else brought the policy back and its Service stayed unswitched until
/// the periodic resync.
pub fn error_policy(policy: Arc<AuthPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjKey::of(policy.as_ref());
    ctx.metrics
        .errors
        .get_or_create(&crate::metrics::ErrorLabels { reason: error.reason() })
        .inc();
    let write = error.write();
    let mut failures = ctx.failures.lock().expect("failures lock");
    let count = match failures.get_mut(&key) {
        Some(f) if f.write == write => {
            f.count += 1;
            f.count
        }
        _ => {
            failures.insert(key.clone(), Failing { write, count: 1 });
            1
        }
    };
    let delay = backoff(count);
    tracing::warn!(policy = %key, error = %error, retry_in_s = delay.as_secs_f64(), "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

fn policy_ref(policy: &AuthPolicy) -> ObjectReference {
    policy.object_ref(&())
}

async fn apply(policy: &AuthPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = ObjKey::of(policy);
    let policies: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    // The policy's version after our last write to it, for the next write's expectation.
    let mut version = policy.resource_version();
    if !policy.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = policy.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        // resourceVersion makes this a compare-and-swap: never clobber another finalizer.
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": policy.resource_version()}});
        let written = policies
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("add finalizer to", "AuthPolicy", &key))?;
        ctx.metrics.write("AuthPolicy", "patch");
        ctx.expectations
            .wrote(&key, Kind::Policy, &key, version, written.metadata.resource_version.as_deref());
        version = written.metadata.resource_version;
    }
    let failures = sidecar_failures(&key, ctx).await;
    let plan = plan::plan(plan::Input {
        policy,
        cache: ctx.cache.as_ref(),
        opts: &ctx.opts,
        validation: validate(policy),
        assume_rolled_out: false,
        sidecar_failures: &failures,
        now: jiff::Timestamp::now(),
    });
    ctx.index.set(key.clone(), plan.touched.clone());
    execute(policy, &plan, ctx, version).await?;
    // A crash-looping sidecar changes nothing the watches see (the Deployment's status stays
    // as it is): while a rollout is pending, look at its Pods again soon.
    let status = plan.status.as_ref().or(policy.status.as_ref());
    let pending = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| [plan::reason::ROLLOUT_PENDING, plan::reason::SIDECAR_FAILING].contains(&c.reason.as_str()));
    Ok(Action::requeue(if pending { ROLLOUT_POLL } else { Duration::from_secs(300) }))
}

/// How often a policy whose rollout is pending looks at the Pods again.
pub const ROLLOUT_POLL: Duration = Duration::from_secs(10);

/// Why the sidecar fails, for each Deployment this policy injected whose rollout has not
/// finished: read from its Pods, listed then (no Pod watch: only pending rollouts need them).
/// A failed list only means no verdict this time.
async fn sidecar_failures(key: &ObjKey, ctx: &Context) -> BTreeMap<ObjKey, String> {
    let mut out = BTreeMap::new();
    for dkey in plan::patched_by(ctx.cache.as_ref(), key).deployments {
        let Some(d) = ctx.cache.deployment(&dkey).filter(|d| !plan::rolled_out(d)) else {
            continue;
        };
        let labels = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        let Some(labels) = labels.filter(|l| !l.is_empty()) else { continue };
        let selector = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &dkey.namespace);
        match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => {
                if let Some(why) = crate::pod_state::sidecar_failure(&list.items) {
                    out.insert(dkey, why);
                }
            }
            Err(e) => tracing::debug!(deployment = %dkey, error = %e, "cannot list the Deployment's Pods"),
        }
    }
    out
}

async fn execute(policy: &AuthPolicy, plan: &Plan, ctx: &Context, policy_version: Option<String>) -> Result<(), Error> {
    let key = ObjKey::of(policy);
    for skey in &plan.create_secrets {
        create_cookie_secret(policy, skey, ctx).await?;
        ctx.expectations.wrote(&key, Kind::Secret, skey, None, None);
    }
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    for a in &plan.deployment_applies {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &a.key.namespace);
        let before = ctx.cache.deployment(&a.key).and_then(|d| d.metadata.resource_version.clone());
        let written = api
            .patch(&a.key.name, &ssa, &Patch::Apply(&a.body))
            .await
            .map_err(api_err("apply", "Deployment", &a.key))?;
        ctx.metrics.write("Deployment", "apply");
        ctx.expectations
            .wrote(&key, Kind::Deployment, &a.key, before, written.metadata.resource_version.as_deref());
        tracing::info!(policy = %key, deployment = %a.key, "sidecar applied");
    }
    for a in plan.service_applies.iter().chain(&plan.service_restores) {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &a.key.namespace);
        let before = ctx.cache.service(&a.key).and_then(|s| s.metadata.resource_version.clone());
        let written = api
            .patch(&a.key.name, &ssa, &Patch::Apply(&a.body))
            .await
            .map_err(api_err("apply", "Service", &a.key))?;
        ctx.metrics.write("Service", "apply");
        ctx.expectations
            .wrote(&key, Kind::Service, &a.key, before, written.metadata.resource_version.as_deref());
        tracing::info!(policy = %key, service = %a.key, "service routed");
    }
    for a in &plan.deployment_releases {
        release_deployment(&a.key, ctx).await?;
    }
    if let Some(status) = &plan.status {
        let policies: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let written = policies
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .map_err(api_err("update status of", "AuthPolicy", &key))?;
        ctx.metrics.write("AuthPolicy", "patch-status");
        ctx.expectations.wrote(
            &key,
            Kind::Policy,
            &key,
            policy_version,
            written.metadata.resource_version.as_deref(),
        );
    }
    for e in &plan.events {
        publish(policy, ctx, e.warning, &e.reason, &e.note).await;
    }
    Ok(())
}

async fn publish(policy: &AuthPolicy, ctx: &Context, warning: bool, reason: &str, note: &str) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are informational: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &policy_ref(policy)).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}

async fn release_deployment(dkey: &ObjKey, ctx: &Context) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &dkey.namespace);
    let body = render::release_patch("apps/v1", "Deployment", dkey);
    match api
        .patch(&dkey.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
    {
        Ok(_) => {}
        // Already gone: nothing left to release.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err("release", "Deployment", dkey)(e)),
    }
    ctx.metrics.write("Deployment", "apply");
    Ok(())
}

async fn create_cookie_secret(policy: &AuthPolicy, skey: &ObjKey, ctx: &Context) -> Result<(), Error> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let value = base64::engine::general_purpose::STANDARD.encode(bytes);
    let same_ns = policy.namespace().as_deref() == Some(skey.namespace.as_str());
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": skey.name,
            "namespace": skey.namespace,
            // No Argo CD tracking labels: Argo CD must not prune what it did not create.
            "labels": {
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
                LABEL_POLICY_NAME: policy.name_any(),
            },
            "annotations": {ANNOTATION_POLICY: ObjKey::of(policy).to_string()},
        },
        "type": "Opaque",
    }))
    .expect("static secret shape");
    secret.string_data = Some([(COOKIE_SECRET_KEY.to_string(), value)].into());
    if same_ns {
        secret.metadata.owner_references = Some(vec![owner_ref(policy)]);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &skey.namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        // Created by an earlier attempt or the other replica: never overwrite, or every session breaks.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(api_err("create", "Secret", skey)(e)),
    }
    ctx.metrics.write("Secret", "create");
    Ok(())
}

fn owner_ref(policy: &AuthPolicy) -> OwnerReference {
    OwnerReference {
        api_version: AuthPolicy::api_version(&()).into(),
        kind: AuthPolicy::kind(&()).into(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Deletion: restore Services first (traffic goes straight to the app port, which old and new
/// pods both have), then release the Deployments, then drop the finalizer.
async fn cleanup(policy: &AuthPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = ObjKey::of(policy);
    if !policy.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let patched = plan::patched_by(ctx.cache.as_ref(), &key);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    for (skey, originals) in &patched.services {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &skey.namespace);
        let body = render::service_restore_patch(skey, originals);
        match api.patch(&skey.name, &ssa, &Patch::Apply(&body)).await {
            Ok(_) => ctx.metrics.write("Service", "apply"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("restore", "Service", skey)(e)),
        }
    }
    for dkey in &patched.deployments {
        release_deployment(dkey, ctx).await?;
    }
    // Generated cookie secrets outside the policy's namespace have no owner reference (those
    // cannot cross namespaces), so delete them here; the others go with the policy.
    let generated = render::generated_cookie_secret_name(policy);
    if render::uses_generated_cookie_secret(policy) {
        let namespaces: std::collections::BTreeSet<&str> = patched
            .deployments
            .iter()
            .map(|d| d.namespace.as_str())
            .filter(|ns| *ns != key.namespace)
            .collect();
        for ns in namespaces {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            match api.delete(&generated, &DeleteParams::default()).await {
                Ok(_) => ctx.metrics.write("Secret", "delete"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err("delete", "Secret", &ObjKey::new(ns, &generated))(e)),
            }
        }
    }
    if !patched.deployments.is_empty() {
        let e = plan::removed_event(&patched.deployments.iter().collect::<Vec<_>>());
        publish(policy, ctx, e.warning, &e.reason, &e.note).await;
    }
    let finalizers: Vec<&String> = policy.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": policy.resource_version()}});
    let policies: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match policies.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => ctx.metrics.write("AuthPolicy", "patch"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err("remove finalizer from", "AuthPolicy", &key)(e)),
    }
    ctx.index.remove(&key);
    ctx.expectations.forget(&key);
    Ok(Action::await_change())
}
