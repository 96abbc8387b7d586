//! The writes a reconcile made whose watch events have not reached the cache yet (the
//! "expectations" of kube-controller-manager): a policy waits for them before it plans again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::cache::Kind;
use crate::cache::{Cache, ObjKey};

/// Writes whose watch event has not reached the cache yet (kube-controller-manager's
/// "expectations"). At scale the watches lag seconds behind a burst of writes; a reconcile
/// that read the stale copies would write again: a Service applied twice, a status going
/// Ready, RolloutPending, Ready. So a policy with an unobserved write waits for it.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<ObjKey, Vec<Expected>>>,
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
                Kind::Route => cache.route(&e.key).map(|o| o.metadata.resource_version.clone()),
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
