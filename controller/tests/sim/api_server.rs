//! The simulated API server: lists, watches (objects as JSON on the wire), server-side
//! apply and merge patches over an in-memory world, with injected faults and a count of
//! every write by kind.

use super::*;

/// A watch stream's wire: objects travel as JSON and are decoded when the controller polls
/// the stream, as kube decodes a watch body. (Queueing decoded objects would charge the
/// controller for a backlog that a real watch keeps in the socket and the API server.)
pub(super) type Feed = UnboundedSender<Event<Box<[u8]>>>;

pub(super) struct Feeds {
    pub(super) policies: Feed,
    pub(super) routes: Feed,
    pub(super) services: Feed,
    pub(super) deployments: Feed,
    pub(super) secrets: Feed,
}

/// The simulated API server's objects. Services and Deployments are kept as JSON, as the
/// API server keeps them in etcd: typed copies of 5,000 of each would weigh more than the
/// controller being measured.
#[derive(Default)]
pub(super) struct World {
    pub(super) policies: BTreeMap<ObjKey, AuthPolicy>,
    pub(super) routes: BTreeMap<ObjKey, HTTPRoute>,
    pub(super) services: BTreeMap<ObjKey, Box<[u8]>>,
    pub(super) deployments: BTreeMap<ObjKey, Box<[u8]>>,
    pub(super) secrets: BTreeMap<ObjKey, Secret>,
}

pub(super) struct ApiServer {
    pub(super) world: Mutex<World>,
    pub(super) feeds: Feeds,
    pub(super) version: AtomicU64,
    /// Writes that took, by kind and verb.
    pub(super) writes: Mutex<BTreeMap<String, u64>>,
    /// Writes refused (409 conflicts, already exists).
    pub(super) refused: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) last_write: Mutex<Instant>,
    pub(super) faults: Faults,
    /// Write requests seen, and how many of them were failed on purpose.
    pub(super) write_requests: AtomicU64,
    pub(super) injected: AtomicU64,
    /// Write requests seen per `Faults::fail_first` suffix.
    pub(super) targeted: Mutex<BTreeMap<&'static str, u64>>,
}

/// Faults the simulated server injects.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// Fail every n-th write request (0: none): a 409 Conflict for policy patches, a 500
    /// for everything else. Nothing is written.
    pub fail_every: u64,
    /// Restart every watch (a relist, as after a dropped watch or a 410 Gone) once half the
    /// policies are Ready.
    pub restart_watches_midway: bool,
    /// Targeted faults: the first `n` write requests to a path ending in `suffix` fail (409 or
    /// 500 as with `fail_every`), the ones after succeed.
    pub fail_first: &'static [(&'static str, u64)],
}

pub(super) fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("objects serialize")
}

pub(super) fn from_value<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-formed object")
}

pub(super) fn from_json<T: DeserializeOwned>(b: &[u8]) -> T {
    serde_json::from_slice(b).expect("a well-formed object")
}

pub(super) fn json_bytes(v: &Value) -> Box<[u8]> {
    serde_json::to_vec(v).expect("objects serialize").into()
}

/// A JSON merge patch (RFC 7386), what `Patch::Merge` sends: objects merge, `null`
/// deletes, anything else (lists included) replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), pv);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub(super) fn status(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).expect("a status code"),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": reason, "code": code}),
    )
}

impl ApiServer {
    pub(super) fn next_version(&self) -> String {
        (self.version.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    pub(super) fn wrote(&self, what: &str) {
        *self.writes.lock().unwrap().entry(what.to_string()).or_default() += 1;
        *self.last_write.lock().unwrap() = Instant::now();
    }

    pub(super) fn total_writes(&self) -> u64 {
        self.writes.lock().unwrap().values().sum()
    }

    pub(super) fn handle(&self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let fail = |api: &ApiServer| {
            api.injected.fetch_add(1, Ordering::Relaxed);
            if path.contains("/authpolicies/") {
                status(409, "Conflict")
            } else {
                status(500, "InternalError")
            }
        };
        if matches!(*method, Method::PATCH | Method::POST)
            && let Some((suffix, n)) = self.faults.fail_first.iter().find(|(suffix, _)| path.ends_with(suffix))
        {
            let mut seen = self.targeted.lock().unwrap();
            let seen = seen.entry(*suffix).or_default();
            *seen += 1;
            if *seen <= *n {
                return fail(self);
            }
        }
        if self.faults.fail_every > 0 && !path.contains("/events") && matches!(*method, Method::PATCH | Method::POST) {
            let n = self.write_requests.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.faults.fail_every) {
                return fail(self);
            }
        }
        let mut world = self.world.lock().unwrap();
        match (method, parts.as_slice()) {
            (&Method::PATCH, ["apis", "sidekey.dev", "v1alpha1", "namespaces", ns, "authpolicies", name, rest @ ..]) => {
                let key = ObjKey::new(*ns, *name);
                let Some(p) = world.policies.get_mut(&key) else {
                    return status(404, "NotFound");
                };
                let mut v = to_value(&*p);
                let is_status = rest == ["status"];
                if !is_status
                    && let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != p.metadata.resource_version.as_deref()
                {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return status(409, "Conflict");
                }
                let mut patch = body.clone();
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge_patch(&mut v, &patch);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *p = from_value(v.clone());
                let _ = self.feeds.policies.send(Event::Apply(json_bytes(&v)));
                self.wrote(if is_status { "AuthPolicy/status" } else { "AuthPolicy/patch" });
                (StatusCode::OK, v)
            }
            (&Method::POST, ["api", "v1", "namespaces", ns, "secrets"]) => {
                let mut v = body.clone();
                let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = ObjKey::new(*ns, name);
                if world.secrets.contains_key(&key) {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return status(409, "AlreadyExists");
                }
                // The API server turns stringData into data.
                if let Some(sd) = v.as_object_mut().and_then(|o| o.remove("stringData")) {
                    let data: serde_json::Map<String, Value> = sd
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, s)| {
                            let b = base64::engine::general_purpose::STANDARD.encode(s.as_str().unwrap_or_default());
                            (k.clone(), json!(b))
                        })
                        .collect();
                    v["data"] = Value::Object(data);
                }
                v["metadata"]["namespace"] = json!(ns);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                let secret: Secret = from_value(v.clone());
                world.secrets.insert(key, secret.clone());
                let _ = self.feeds.secrets.send(Event::Apply(json_bytes(&v)));
                self.wrote("Secret/create");
                (StatusCode::CREATED, v)
            }
            (&Method::PATCH, ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
                let Some(d) = world.deployments.get_mut(&ObjKey::new(*ns, *name)) else {
                    return status(404, "NotFound");
                };
                let before: Value = from_json(d);
                let mut v = before.clone();
                merge::merge(&mut v, body);
                if v["spec"] != before["spec"] {
                    let generation = before["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    v["metadata"]["generation"] = json!(generation);
                    // The rollout finishes at once.
                    v["status"]["observedGeneration"] = json!(generation);
                    v["status"]["updatedReplicas"] = v["spec"]["replicas"].clone();
                    v["status"]["availableReplicas"] = v["spec"]["replicas"].clone();
                }
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *d = json_bytes(&v);
                let _ = self.feeds.deployments.send(Event::Apply(json_bytes(&v)));
                self.wrote("Deployment/apply");
                (StatusCode::OK, v)
            }
            (&Method::PATCH, ["api", "v1", "namespaces", ns, "services", name]) => {
                let Some(s) = world.services.get_mut(&ObjKey::new(*ns, *name)) else {
                    return status(404, "NotFound");
                };
                let mut v: Value = from_json(s);
                merge::merge(&mut v, body);
                v["metadata"]["resourceVersion"] = json!(self.next_version());
                *s = json_bytes(&v);
                let _ = self.feeds.services.send(Event::Apply(json_bytes(&v)));
                self.wrote("Service/apply");
                (StatusCode::OK, v)
            }
            (&Method::POST | &Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", ..]) => {
                self.events.fetch_add(1, Ordering::Relaxed);
                (StatusCode::OK, body.clone())
            }
            _ => status(404, "NotFound"),
        }
    }

    /// Every watch relists, as after a watch restart: Init, every object, InitDone.
    pub(super) fn relist(&self) {
        let world = self.world.lock().unwrap();
        fn feed(tx: &Feed, objects: impl Iterator<Item = Box<[u8]>>) {
            let _ = tx.send(Event::Init);
            for o in objects {
                let _ = tx.send(Event::InitApply(o));
            }
            let _ = tx.send(Event::InitDone);
        }
        fn typed<K: Serialize>(objects: &BTreeMap<ObjKey, K>) -> impl Iterator<Item = Box<[u8]>> + '_ {
            objects.values().map(|o| json_bytes(&to_value(o)))
        }
        feed(&self.feeds.policies, typed(&world.policies));
        feed(&self.feeds.routes, typed(&world.routes));
        feed(&self.feeds.services, world.services.values().cloned());
        feed(&self.feeds.deployments, world.deployments.values().cloned());
        feed(&self.feeds.secrets, typed(&world.secrets));
    }

    pub(super) fn ready_policies(&self) -> usize {
        let world = self.world.lock().unwrap();
        world
            .policies
            .values()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == p.metadata.generation)
                })
            })
            .count()
    }
}
