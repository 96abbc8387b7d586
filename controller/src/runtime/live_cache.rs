//! The reflector stores the controller watches through, read as a [`Cache`]; Secrets are
//! kept as a digest of their data only.

use super::*;

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
pub(super) fn indexed<K, W>(
    stream: W,
    store: Store<K>,
    index: Arc<RwLock<StoreIndex>>,
) -> impl futures_util::Stream<Item = W::Item> + Send + 'static
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

const DIGEST_KEY: &str = "sidekey.dev/digest";

/// Keeps only a digest of a Secret's data in memory: enough to roll pods on rotation,
/// without holding every Secret of the cluster in the controller.
pub(super) fn digest_secret(s: &mut Secret) {
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
    // `kubectl apply` keeps the whole Secret, data included, in this annotation.
    if let Some(a) = s.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What of a Service stays in memory: its spec and sidekey's annotations (the only ones
/// read). Managed fields, status and other tools' annotations (kubectl's last-applied
/// configuration is as large as the object) are dropped on arrival.
pub(super) fn slim_service(s: &mut Service) {
    s.metadata.managed_fields = None;
    s.status = None;
    if let Some(a) = s.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(crate::names::ANNOTATION_PREFIX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_service_keeps_its_spec_and_sidekeys_annotations_only() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "annotations": {
                "sidekey.dev/policy": "shop/sso",
                "sidekey.dev/reverts": "{}",
                LAST_APPLIED: "{\"a\": \"whole object\"}",
                "argocd.argoproj.io/tracking-id": "shop:/Service:shop/web",
            }, "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
        }))
        .unwrap();
        let spec = svc.spec.clone();
        slim_service(&mut svc);
        let kept: Vec<&str> = svc.metadata.annotations.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kept, ["sidekey.dev/policy", "sidekey.dev/reverts"]);
        assert!(svc.metadata.managed_fields.is_none() && svc.status.is_none());
        assert_eq!(svc.spec, spec, "what the resolver reads stays");
        assert_eq!(svc.metadata.labels.unwrap()["app"], "web");
    }

    #[test]
    fn a_cached_secret_keeps_a_digest_and_not_kubectls_copy_of_its_data() {
        let mut secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cookie", "namespace": "shop", "annotations": {
                LAST_APPLIED: "{\"data\": {\"cookie-secret\": \"c2VjcmV0\"}}",
                "sidekey.dev/policy": "shop/sso",
            }},
            "data": {"cookie-secret": "c2VjcmV0"},
        }))
        .unwrap();
        digest_secret(&mut secret);
        let text = serde_json::to_string(&secret).unwrap();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(secret.metadata.annotations.unwrap().contains_key("sidekey.dev/policy"));
        assert_eq!(secret.data.unwrap().len(), 1, "the digest alone");
    }
}
