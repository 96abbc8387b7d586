//! One reconcile of a policy: wait for the caches and for our own earlier writes to show,
//! plan (or, for a deleted policy, plan the clean-up), and hand the plan to the
//! [`Writer`](crate::writer::Writer); then decide when to look again, with a back-off keyed on
//! the write that failed. Every request is a write (reads come from the cache), except the
//! Pod list of a pending rollout, which is what the mock-API tests count.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Api, Client};

use crate::api::AuthPolicy;
use crate::cache::{Cache, ObjKey};
use crate::expectations::Expectations;
use crate::metrics::Metrics;
use crate::names::FIELD_MANAGER;
use crate::plan;
use crate::policy_index::Index;
use crate::render::RenderOptions;
use crate::validate::validate;
pub use crate::writer::Error;
use crate::writer::Writer;

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

    /// The one door for `policy`'s writes.
    fn writer<'a>(&'a self, policy: &'a AuthPolicy) -> Writer<'a> {
        Writer {
            client: &self.client,
            cache: self.cache.as_ref(),
            metrics: &self.metrics,
            expectations: &self.expectations,
            recorder: &self.recorder,
            policy,
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

async fn apply(policy: &AuthPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = ObjKey::of(policy);
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
    ctx.writer(policy).execute(&plan).await?;
    // A crash-looping sidecar changes nothing the watches see (the Deployment's status stays
    // as it is): while a rollout is pending, look at its Pods again soon.
    let status = plan.status.as_ref().or(policy.status.as_ref());
    let pending = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == plan::condition::READY))
        .is_some_and(|c| [plan::reason::ROLLOUT_PENDING, plan::reason::SIDECAR_FAILING].contains(&c.reason.as_str()));
    Ok(Action::requeue(if pending { ROLLOUT_POLL } else { Duration::from_secs(300) }))
}

/// Deletion: the clean-up plan (restore, release, delete, drop the finalizer), run by the
/// same writer as every other plan.
async fn cleanup(policy: &AuthPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = ObjKey::of(policy);
    let plan = plan::cleanup(policy, ctx.cache.as_ref());
    ctx.writer(policy).execute(&plan).await?;
    ctx.index.remove(&key);
    ctx.expectations.forget(&key);
    Ok(Action::await_change())
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
