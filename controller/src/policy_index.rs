//! Which policies looked at which objects in their last reconcile, so that a watch event on
//! an object re-queues exactly the policies that read it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::cache::{Kind, ObjKey};
use crate::resolve::Touched;

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
    pub fn policies_touching(&self, kind: Kind, key: &ObjKey) -> Vec<ObjKey> {
        let inner = self.inner.lock().expect("index lock");
        let map = match kind {
            Kind::Route => &inner.routes,
            Kind::Service => &inner.services,
            Kind::Deployment => &inner.deployments,
            Kind::Secret => &inner.secrets,
            // Policies are the index's keys, never what it looks up.
            Kind::Policy => return Vec::new(),
        };
        map.get(key).map(|ps| ps.iter().cloned().collect()).unwrap_or_default()
    }
}
