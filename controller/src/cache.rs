//! Read access to the cluster objects the resolver needs, whatever holds them: the
//! controller's reflector stores, or the files given to `sidekey-controller render`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::deployment::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::api::AuthPolicy;
use crate::gateway::{HTTPRoute, ReferenceGrant};

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        ObjKey::new(
            obj.meta().namespace.clone().unwrap_or_default(),
            obj.meta().name.clone().unwrap_or_default(),
        )
    }
}

/// The kinds of object the controller reads and writes: one enum for the watch index, the
/// write expectations and the write door's messages and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Policy,
    Route,
    Service,
    Deployment,
    Secret,
}

impl Kind {
    /// The Kubernetes kind, as messages and metric labels name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Policy => "AuthPolicy",
            Kind::Route => "HTTPRoute",
            Kind::Service => "Service",
            Kind::Deployment => "Deployment",
            Kind::Secret => "Secret",
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the resolver reads. Implementations must be cheap to query repeatedly.
pub trait Cache {
    fn policies(&self) -> Vec<Arc<AuthPolicy>>;
    fn policy(&self, key: &ObjKey) -> Option<Arc<AuthPolicy>>;
    fn policies_in(&self, namespace: &str) -> Vec<Arc<AuthPolicy>>;
    fn deployment(&self, key: &ObjKey) -> Option<Arc<Deployment>>;
    fn route(&self, key: &ObjKey) -> Option<Arc<HTTPRoute>>;
    /// `false` when the HTTPRoute CRD is not installed (Service targets keep working).
    fn routes_available(&self) -> bool;
    fn grants_in(&self, namespace: &str) -> Vec<Arc<ReferenceGrant>>;
    fn service(&self, key: &ObjKey) -> Option<Arc<Service>>;
    fn deployments_in(&self, namespace: &str) -> Vec<Arc<Deployment>>;
    /// A digest of the Secret's data, so a rotation changes the rendered config hash.
    fn secret_digest(&self, key: &ObjKey) -> Option<String>;
    /// Deployments and Services carrying our annotation naming `policy` (`namespace/name`).
    fn patched_by(&self, policy: &str) -> (Vec<Arc<Deployment>>, Vec<Arc<Service>>);
    /// Whether every watched kind has been listed once. Until then an absent route,
    /// Service or Deployment may only be not loaded yet, and acting on it would undo
    /// protection (a new leader releasing a sidecar it cannot see the route to yet).
    fn synced(&self) -> bool {
        true
    }
}

pub fn annotated_by<K: kube::Resource>(obj: &K, policy: &str) -> bool {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::names::ANNOTATION_POLICY))
        .is_some_and(|p| p == policy)
}

/// An in-memory cache: the offline renderer's input, and the tests' world.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub policies: BTreeMap<ObjKey, Arc<AuthPolicy>>,
    pub routes: BTreeMap<ObjKey, Arc<HTTPRoute>>,
    pub routes_available: bool,
    pub grants: BTreeMap<ObjKey, Arc<ReferenceGrant>>,
    pub services: BTreeMap<ObjKey, Arc<Service>>,
    pub deployments: BTreeMap<ObjKey, Arc<Deployment>>,
    pub secrets: BTreeMap<ObjKey, String>,
    /// Some kind is still being listed (a live cache right after start or failover).
    pub listing: bool,
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot {
            routes_available: true,
            ..Default::default()
        }
    }

    pub fn add_policy(&mut self, p: AuthPolicy) -> &mut Self {
        self.policies.insert(ObjKey::of(&p), Arc::new(p));
        self
    }
    pub fn add_route(&mut self, r: HTTPRoute) -> &mut Self {
        self.routes.insert(ObjKey::of(&r), Arc::new(r));
        self
    }
    pub fn add_grant(&mut self, g: ReferenceGrant) -> &mut Self {
        self.grants.insert(ObjKey::of(&g), Arc::new(g));
        self
    }
    pub fn add_service(&mut self, s: Service) -> &mut Self {
        self.services.insert(ObjKey::of(&s), Arc::new(s));
        self
    }
    pub fn add_deployment(&mut self, d: impl Into<Deployment>) -> &mut Self {
        let d = d.into();
        self.deployments.insert(ObjKey::of(&d), Arc::new(d));
        self
    }
    pub fn remove_deployment(&mut self, key: &ObjKey) -> &mut Self {
        self.deployments.remove(key);
        self
    }
    pub fn add_secret(&mut self, key: ObjKey, digest: impl Into<String>) -> &mut Self {
        self.secrets.insert(key, digest.into());
        self
    }
}

impl Cache for Snapshot {
    fn policies(&self) -> Vec<Arc<AuthPolicy>> {
        self.policies.values().cloned().collect()
    }
    fn policy(&self, key: &ObjKey) -> Option<Arc<AuthPolicy>> {
        self.policies.get(key).cloned()
    }
    fn policies_in(&self, namespace: &str) -> Vec<Arc<AuthPolicy>> {
        self.policies
            .range(ObjKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, p)| p.clone())
            .collect()
    }
    fn deployment(&self, key: &ObjKey) -> Option<Arc<Deployment>> {
        self.deployments.get(key).cloned()
    }
    fn route(&self, key: &ObjKey) -> Option<Arc<HTTPRoute>> {
        self.routes.get(key).cloned()
    }
    fn routes_available(&self) -> bool {
        self.routes_available
    }
    fn grants_in(&self, namespace: &str) -> Vec<Arc<ReferenceGrant>> {
        self.grants
            .values()
            .filter(|g| g.namespace().as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
    fn service(&self, key: &ObjKey) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }
    fn deployments_in(&self, namespace: &str) -> Vec<Arc<Deployment>> {
        self.deployments
            .range(ObjKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, d)| d.clone())
            .collect()
    }
    fn secret_digest(&self, key: &ObjKey) -> Option<String> {
        self.secrets.get(key).cloned()
    }
    fn patched_by(&self, policy: &str) -> (Vec<Arc<Deployment>>, Vec<Arc<Service>>) {
        (
            self.deployments
                .values()
                .filter(|d| annotated_by(d.as_ref(), policy))
                .cloned()
                .collect(),
            self.services
                .values()
                .filter(|s| annotated_by(s.as_ref(), policy))
                .cloned()
                .collect(),
        )
    }
    fn synced(&self) -> bool {
        !self.listing
    }
}

/// Names by namespace and keys by owning policy (our annotation) for one reflector store,
/// kept in step with its watch events. Without it, "the Deployments in this namespace" and
/// "what this policy patched" scanned every object in the cluster on every reconcile: at
/// 5,000 Deployments that was most of the controller's CPU (see BENCHMARKS.md). Entries
/// may briefly name objects the store no longer has; lookups go through the store.
#[derive(Default)]
pub struct StoreIndex {
    by_namespace: std::collections::HashMap<String, std::collections::BTreeSet<String>>,
    by_policy: std::collections::HashMap<String, std::collections::BTreeSet<ObjKey>>,
    policy_of: std::collections::HashMap<ObjKey, String>,
}

impl StoreIndex {
    pub fn apply(&mut self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        let key = ObjKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        self.by_namespace.entry(key.namespace.clone()).or_default().insert(key.name.clone());
        let policy = meta.annotations.as_ref().and_then(|a| a.get(crate::names::ANNOTATION_POLICY));
        if self.policy_of.get(&key) != policy {
            self.forget_policy(&key);
            if let Some(p) = policy {
                self.by_policy.entry(p.clone()).or_default().insert(key.clone());
                self.policy_of.insert(key, p.clone());
            }
        }
    }

    pub fn delete(&mut self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        let key = ObjKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        if let Some(names) = self.by_namespace.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.by_namespace.remove(&key.namespace);
            }
        }
        self.forget_policy(&key);
    }

    /// After a relist: exactly the objects listed.
    pub fn rebuild<'a>(&mut self, metas: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>) {
        *self = StoreIndex::default();
        for m in metas {
            self.apply(m);
        }
    }

    fn forget_policy(&mut self, key: &ObjKey) {
        if let Some(old) = self.policy_of.remove(key)
            && let Some(keys) = self.by_policy.get_mut(&old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_policy.remove(&old);
            }
        }
    }

    /// Names in `namespace`, sorted.
    pub fn in_namespace(&self, namespace: &str) -> Vec<ObjKey> {
        self.by_namespace
            .get(namespace)
            .map(|names| names.iter().map(|n| ObjKey::new(namespace, n)).collect())
            .unwrap_or_default()
    }

    /// Keys annotated with `policy`.
    pub fn of_policy(&self, policy: &str) -> Vec<ObjKey> {
        self.by_policy.get(policy).map(|k| k.iter().cloned().collect()).unwrap_or_default()
    }
}
