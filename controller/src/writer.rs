//! The one door every write of the controller goes through, and the executor that runs a
//! [`Plan`] through it, in the plan's order.
//!
//! One policy for all of them: a write the server accepted is counted
//! (`sidekey_controller_api_writes_total{kind,verb}`) and expected (the policy waits for its
//! watch event, see [`Expectations`]); a write that finds its object gone (404) is done when
//! it was undoing something (a release, a restore, a delete, the last finalizer) and an error
//! otherwise; a cookie Secret that already exists (409) is kept, never overwritten, or every
//! session would break. Neither a 404 nor a 409 wrote anything, so neither is counted.

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use serde_json::json;
use thiserror::Error;

use crate::api::{AuthPolicy, AuthPolicyStatus};
use crate::cache::{Cache, ObjKey};
use crate::deployment::Deployment;
use crate::expectations::{Expectations, Kind};
use crate::metrics::Metrics;
use crate::names::{ANNOTATION_POLICY, COOKIE_SECRET_KEY, FIELD_MANAGER, LABEL_POLICY_NAME};
use crate::plan::{Apply, EventSpec, Plan};

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

    /// The metric label of the failure: `api_<status>` or `transport`.
    pub fn reason(&self) -> String {
        match self {
            Error::Api { source, .. } => match source {
                kube::Error::Api(s) => format!("api_{}", s.code),
                _ => "transport".into(),
            },
        }
    }
}

/// One write, as data.
enum Write<'a> {
    /// Server-side apply of our fields (`body`) to a Deployment or Service. `undo` for a
    /// release or a restore, which a gone object has nothing left to undo for.
    Apply {
        kind: Kind,
        apply: &'a Apply,
        action: &'static str,
        undo: bool,
    },
    /// The policy's finalizers, compare-and-swap on `version` (never clobber another one).
    Finalizers {
        finalizers: &'a [String],
        version: Option<String>,
        undo: bool,
    },
    Status {
        status: &'a AuthPolicyStatus,
    },
    CreateSecret {
        key: &'a ObjKey,
    },
    DeleteSecret {
        key: &'a ObjKey,
    },
}

/// What a write came to, when it was not an error.
enum Outcome {
    /// The server accepted it: the object's new version (`None` for a delete).
    Written(Option<String>),
    /// 404 while undoing, or 409 creating a Secret: nothing was written, nothing is needed.
    Unneeded,
}

/// Sends one policy's writes: the only place the controller calls the API to change
/// anything besides Events.
pub struct Writer<'a> {
    pub client: &'a Client,
    pub cache: &'a (dyn Cache + Send + Sync),
    pub metrics: &'a Metrics,
    pub expectations: &'a Expectations,
    pub recorder: &'a Recorder,
    pub policy: &'a AuthPolicy,
}

impl Writer<'_> {
    /// Runs `plan` in its order. The policy's version after each of our writes to it is
    /// threaded through, so the next write's expectation waits for the right version.
    pub async fn execute(&self, plan: &Plan) -> Result<(), Error> {
        let mut version = self.policy.resource_version();
        if let Some(finalizers) = &plan.add_finalizer {
            let w = Write::Finalizers {
                finalizers,
                version: version.clone(),
                undo: false,
            };
            if let Outcome::Written(v) = self.send(w, version.clone()).await? {
                version = v;
            }
        }
        for key in &plan.create_secrets {
            self.send(Write::CreateSecret { key }, None).await?;
        }
        // Protect first, then undo what is no longer wanted: Services are restored before
        // the Deployments behind them are released (the app port exists in old and new pods).
        let objects = [
            (&plan.deployment_applies, Kind::Deployment, "apply", false, "sidecar applied"),
            (&plan.service_applies, Kind::Service, "apply", false, "service routed"),
            (&plan.service_restores, Kind::Service, "restore", true, "service restored"),
            (&plan.deployment_releases, Kind::Deployment, "release", true, "sidecar released"),
        ];
        for (applies, kind, action, undo, done) in objects {
            for apply in applies {
                self.send(Write::Apply { kind, apply, action, undo }, None).await?;
                tracing::info!(policy = %self.key(), kind = kind.name(), object = %apply.key, "{done}");
            }
        }
        for key in &plan.delete_secrets {
            self.send(Write::DeleteSecret { key }, None).await?;
        }
        if let Some(status) = &plan.status
            && let Outcome::Written(v) = self.send(Write::Status { status }, version.clone()).await?
        {
            version = v;
        }
        for e in &plan.events {
            self.publish(e).await;
        }
        if let Some(finalizers) = &plan.remove_finalizer {
            let w = Write::Finalizers {
                finalizers,
                version: self.policy.resource_version(),
                undo: true,
            };
            self.send(w, version).await?;
        }
        Ok(())
    }

    fn key(&self) -> ObjKey {
        ObjKey::of(self.policy)
    }

    /// Sends `w` and applies the one policy to its answer. `policy_version` is the policy's
    /// version before a write to the policy itself (its expectation).
    async fn send(&self, w: Write<'_>, policy_version: Option<String>) -> Result<Outcome, Error> {
        let me = self.key();
        let (kind, key, action, undo) = match &w {
            Write::Apply { kind, apply, action, undo } => (*kind, apply.key.clone(), *action, *undo),
            Write::Finalizers { undo, .. } => (
                Kind::Policy,
                me.clone(),
                if *undo { "remove finalizer from" } else { "add finalizer to" },
                *undo,
            ),
            Write::Status { .. } => (Kind::Policy, me.clone(), "update status of", false),
            Write::CreateSecret { key } => (Kind::Secret, (*key).clone(), "create", false),
            Write::DeleteSecret { key } => (Kind::Secret, (*key).clone(), "delete", true),
        };
        let before = match kind {
            Kind::Policy => policy_version,
            Kind::Deployment => self.cache.deployment(&key).and_then(|d| d.metadata.resource_version.clone()),
            Kind::Service => self.cache.service(&key).and_then(|s| s.metadata.resource_version.clone()),
            // Secrets are cached as digests only; routes are never written.
            Kind::Secret | Kind::Route => None,
        };
        let verb = verb(&w);
        match self.request(w).await {
            Ok(after) => {
                self.metrics.write(kind.name(), verb);
                // A delete leaves nothing to wait for: the plan after it no longer looks.
                if verb != "delete" {
                    self.expectations.wrote(&me, kind, &key, before, after.as_deref());
                }
                Ok(Outcome::Written(after))
            }
            Err(kube::Error::Api(s)) if s.code == 404 && undo => Ok(Outcome::Unneeded),
            Err(kube::Error::Api(s)) if s.code == 409 && kind == Kind::Secret && verb == "create" => Ok(Outcome::Unneeded),
            Err(source) => Err(Error::Api {
                action,
                kind: kind.name(),
                key: key.to_string(),
                source,
            }),
        }
    }

    /// The request itself; the object's version afterwards.
    async fn request(&self, w: Write<'_>) -> Result<Option<String>, kube::Error> {
        let client = self.client.clone();
        let me = self.key();
        let ssa = PatchParams::apply(FIELD_MANAGER).force();
        let version = |m: &kube::api::ObjectMeta| m.resource_version.clone();
        match w {
            Write::Apply {
                kind: Kind::Deployment,
                apply,
                ..
            } => {
                let api: Api<Deployment> = Api::namespaced(client, &apply.key.namespace);
                api.patch(&apply.key.name, &ssa, &Patch::Apply(&apply.body))
                    .await
                    .map(|d| version(&d.metadata))
            }
            Write::Apply { apply, .. } => {
                let api: Api<Service> = Api::namespaced(client, &apply.key.namespace);
                api.patch(&apply.key.name, &ssa, &Patch::Apply(&apply.body))
                    .await
                    .map(|s| version(&s.metadata))
            }
            Write::Finalizers {
                finalizers, version: v, ..
            } => {
                let api: Api<AuthPolicy> = Api::namespaced(client, &me.namespace);
                let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": v}});
                api.patch(&me.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|p| version(&p.metadata))
            }
            Write::Status { status } => {
                let api: Api<AuthPolicy> = Api::namespaced(client, &me.namespace);
                api.patch_status(&me.name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                    .await
                    .map(|p| version(&p.metadata))
            }
            Write::CreateSecret { key } => {
                let api: Api<Secret> = Api::namespaced(client, &key.namespace);
                api.create(&PostParams::default(), &cookie_secret(self.policy, key))
                    .await
                    .map(|s| version(&s.metadata))
            }
            Write::DeleteSecret { key } => {
                let api: Api<Secret> = Api::namespaced(client, &key.namespace);
                api.delete(&key.name, &DeleteParams::default()).await.map(|_| None)
            }
        }
    }

    async fn publish(&self, e: &EventSpec) {
        let event = Event {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.clone(),
            note: Some(e.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Events are informational: failing to record one must not fail the reconcile.
        if let Err(err) = self.recorder.publish(&event, &self.policy.object_ref(&())).await {
            tracing::debug!(error = %err, "could not publish event");
        }
    }
}

/// The `verb` label of `sidekey_controller_api_writes_total` (its `kind` is the object's).
fn verb(w: &Write<'_>) -> &'static str {
    match w {
        Write::Apply { .. } => "apply",
        Write::Finalizers { .. } => "patch",
        Write::Status { .. } => "patch-status",
        Write::CreateSecret { .. } => "create",
        Write::DeleteSecret { .. } => "delete",
    }
}

/// A new cookie Secret: 32 random bytes, labelled and annotated as ours, owned by the policy
/// when it lives in the policy's namespace (owner references cannot cross namespaces).
fn cookie_secret(policy: &AuthPolicy, key: &ObjKey) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let value = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": key.name,
            "namespace": key.namespace,
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
    if policy.namespace().as_deref() == Some(key.namespace.as_str()) {
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: AuthPolicy::api_version(&()).into(),
            kind: AuthPolicy::kind(&()).into(),
            name: policy.name_any(),
            uid: policy.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
    }
    secret
}
