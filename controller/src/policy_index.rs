//! Which policies looked at which objects in their last reconcile, so that a watch event on
//! an object re-queues exactly the policies that read it.

use std::collections::HashMap;
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

/// The reverse maps hold each object's policies as a sorted `Vec`: nearly every object is
/// looked at by one policy, and a `BTreeSet` allocates a whole node (about 540 bytes) for
/// it; at 1,000 policies over 12,000 objects that was 6 MiB (BENCHMARKS.md).
#[derive(Default)]
struct IndexInner {
    touched: HashMap<ObjKey, Touched>,
    routes: HashMap<ObjKey, Vec<ObjKey>>,
    services: HashMap<ObjKey, Vec<ObjKey>>,
    deployments: HashMap<ObjKey, Vec<ObjKey>>,
    secrets: HashMap<ObjKey, Vec<ObjKey>>,
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
                    let ps = map.entry(k.clone()).or_default();
                    if let Err(at) = ps.binary_search(policy) {
                        ps.insert(at, policy.clone());
                    }
                } else if let Some(ps) = map.get_mut(k) {
                    if let Ok(at) = ps.binary_search(policy) {
                        ps.remove(at);
                    }
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
        map.get(key).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjKey {
        ObjKey::new("ns", name)
    }

    fn touching(services: &[&str]) -> Touched {
        Touched {
            services: services.iter().map(|s| key(s)).collect(),
            ..Touched::default()
        }
    }

    #[test]
    fn an_object_maps_back_to_exactly_the_policies_that_last_looked_at_it_sorted() {
        let index = Index::default();
        index.set(key("p2"), touching(&["web", "api"]));
        index.set(key("p1"), touching(&["web"]));
        index.set(key("p3"), touching(&["web"]));
        assert_eq!(
            index.policies_touching(Kind::Service, &key("web")),
            [key("p1"), key("p2"), key("p3")]
        );
        assert_eq!(index.policies_touching(Kind::Service, &key("api")), [key("p2")]);
        assert!(index.policies_touching(Kind::Deployment, &key("web")).is_empty(), "another kind");

        // A new reconcile replaces what the policy looked at before; setting it twice
        // never lists it twice.
        index.set(key("p2"), touching(&["api"]));
        index.set(key("p2"), touching(&["api"]));
        assert_eq!(index.policies_touching(Kind::Service, &key("web")), [key("p1"), key("p3")]);
        assert_eq!(index.policies_touching(Kind::Service, &key("api")), [key("p2")]);

        index.remove(&key("p2"));
        assert!(index.policies_touching(Kind::Service, &key("api")).is_empty());
        let inner = index.inner.lock().unwrap();
        assert!(
            !inner.services.contains_key(&key("api")),
            "an object no policy looks at is forgotten"
        );
    }
}
