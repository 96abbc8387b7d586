//! What one reconcile must do — the writes and the status — decided from cached state
//! alone. Pure: the reconciler executes a [`Plan`]; `render` previews one; tests assert on it.

use crate::names::{ANNOTATION_ORIGINAL_PORTS, ANNOTATION_REVERTS, FINALIZER};
use std::collections::{BTreeMap, BTreeSet};

use crate::deployment::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{AuthPolicy, AuthPolicyStatus, DEFAULT_AUDIENCE, TargetState, WorkloadIdentityStatus};
use crate::cache::{Cache, ObjKey};
use crate::merge;
use crate::render::{self, RenderOptions};
use crate::resolve::{self, Resolution, Touched};

mod vocabulary;
pub use vocabulary::{condition, event, reason};

/// Re-switches allowed within [`REVERT_WINDOW`]; one more revert and sidekey stops
/// re-applying and says why, instead of fighting another tool in a hot loop.
pub const MAX_RESWITCHES: u32 = 3;
pub const REVERT_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

#[derive(serde::Serialize, serde::Deserialize)]
struct Reverts {
    count: u32,
    since: jiff::Timestamp,
}

/// The revert count including the one just seen: the window restarts once it has passed.
fn count_revert(svc: &k8s_openapi::api::core::v1::Service, now: jiff::Timestamp) -> Reverts {
    let previous: Option<Reverts> = svc.annotations().get(ANNOTATION_REVERTS).and_then(|a| serde_json::from_str(a).ok());
    match previous {
        Some(r) if now.duration_since(r.since) <= REVERT_WINDOW => Reverts {
            count: r.count + 1,
            since: r.since,
        },
        _ => Reverts { count: 1, since: now },
    }
}

fn fight_message(skey: &ObjKey, r: &Reverts) -> String {
    format!(
        "Service {skey}: its targetPort was put back {} times within {} minutes after sidekey switched it to the sidecar; \
         another tool keeps reverting it (an Argo CD sync or self-heal, Flux, a script). sidekey leaves it alone until {}, \
         so traffic through this Service reaches the app WITHOUT authentication. Let sidekey own targetPort: for Argo CD, \
         ignoreDifferences with managedFieldsManagers: [sidekey-controller] and RespectIgnoreDifferences=true \
         (docs/gitops-argocd.md)",
        r.count,
        REVERT_WINDOW.as_mins(),
        r.since + REVERT_WINDOW
    )
}

#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    pub key: ObjKey,
    pub body: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Everything one reconcile writes, in the order the reconciler sends it: the finalizer
/// first (so nothing is patched that a deletion could not undo), then the objects, then the
/// status, and on deletion the finalizer last (once everything is put back).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The policy's finalizers with ours added, to set before anything else.
    pub add_finalizer: Option<Vec<String>>,
    /// Cookie secrets to create (namespace/name), the policy owning those in its own namespace.
    pub create_secrets: Vec<ObjKey>,
    pub deployment_applies: Vec<Apply>,
    pub service_applies: Vec<Apply>,
    /// Objects this policy patched earlier but no longer should: restore or release.
    pub service_restores: Vec<Apply>,
    pub deployment_releases: Vec<Apply>,
    /// Generated cookie secrets to delete on deletion: those outside the policy's namespace,
    /// which no owner reference can hold (the others go with the policy).
    pub delete_secrets: Vec<ObjKey>,
    /// `None` when the status is already current.
    pub status: Option<AuthPolicyStatus>,
    pub events: Vec<EventSpec>,
    /// The policy's finalizers with ours removed, to set last: the clean-up is done.
    pub remove_finalizer: Option<Vec<String>>,
    pub touched: Touched,
}

impl Plan {
    pub fn writes(&self) -> usize {
        usize::from(self.add_finalizer.is_some())
            + self.create_secrets.len()
            + self.deployment_applies.len()
            + self.service_applies.len()
            + self.service_restores.len()
            + self.deployment_releases.len()
            + self.delete_secrets.len()
            + usize::from(self.status.is_some())
            + usize::from(self.remove_finalizer.is_some())
    }
}

/// A deleted policy's clean-up, decided from the cache: every Service it switched restored
/// (traffic goes straight to the app port, which old and new pods both have), then every
/// Deployment it patched released, its generated cookie secrets in other namespaces deleted,
/// and the finalizer dropped. Nothing when our finalizer is already gone.
pub fn cleanup(policy: &AuthPolicy, cache: &dyn Cache) -> Plan {
    let mut out = Plan::default();
    if !policy.finalizers().iter().any(|f| f == FINALIZER) {
        return out;
    }
    let me = ObjKey::of(policy);
    let patched = patched_by(cache, &me);
    for (skey, originals) in &patched.services {
        out.service_restores.push(Apply {
            key: skey.clone(),
            body: render::service_restore_patch(skey, originals),
        });
    }
    for dkey in &patched.deployments {
        out.deployment_releases.push(Apply {
            key: dkey.clone(),
            body: render::release_patch("apps/v1", "Deployment", dkey),
        });
    }
    if render::uses_generated_cookie_secret(policy) {
        let name = render::generated_cookie_secret_name(policy);
        let namespaces: BTreeSet<&str> = patched
            .deployments
            .iter()
            .map(|d| d.namespace.as_str())
            .filter(|ns| *ns != me.namespace)
            .collect();
        out.delete_secrets = namespaces.into_iter().map(|ns| ObjKey::new(ns, &name)).collect();
    }
    if !patched.deployments.is_empty() {
        out.events.push(removed_event(&patched.deployments.iter().collect::<Vec<_>>()));
    }
    out.remove_finalizer = Some(policy.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect());
    out
}

pub fn patched_by(cache: &dyn Cache, policy: &ObjKey) -> Patched {
    let (deployments, services) = cache.patched_by(&policy.to_string());
    Patched {
        deployments: deployments.iter().map(|d| ObjKey::of(d.as_ref())).collect(),
        services: services.iter().map(|s| (ObjKey::of(s.as_ref()), remembered_ports(s))).collect(),
    }
}

/// Objects a policy patched before, found by our annotation.
#[derive(Clone, Debug, Default)]
pub struct Patched {
    pub deployments: Vec<ObjKey>,
    pub services: Vec<(ObjKey, BTreeMap<String, String>)>,
}

pub fn remembered_ports(svc: &k8s_openapi::api::core::v1::Service) -> BTreeMap<String, String> {
    svc.annotations()
        .get(ANNOTATION_ORIGINAL_PORTS)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

/// Whether the Deployment runs its current template everywhere: observed, fully updated, available.
pub fn rolled_out(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) >= want
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && status.available_replicas.unwrap_or(0) >= want
}

pub struct Input<'a> {
    pub policy: &'a AuthPolicy,
    pub cache: &'a dyn Cache,
    pub opts: &'a RenderOptions,
    pub validation: Vec<String>,
    /// Offline: treat every rollout as finished, to show the end state.
    pub assume_rolled_out: bool,
    /// Deployments whose rollout is pending because the sidecar fails, with why (from their
    /// Pods, see [`crate::pod_state`]).
    pub sidecar_failures: &'a BTreeMap<ObjKey, String>,
    pub now: jiff::Timestamp,
}

pub fn plan(input: Input<'_>) -> Plan {
    let Input {
        policy,
        cache,
        opts,
        validation,
        assume_rolled_out,
        sidecar_failures,
        now,
    } = input;
    let me = ObjKey::of(policy);
    let patched = patched_by(cache, &me);
    let mut out = Plan::default();
    if !policy.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = policy.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        out.add_finalizer = Some(finalizers);
    }
    let res: Resolution = resolve::resolve(policy, cache);
    out.touched = res.touched.clone();
    let mut targets = res.targets.clone();

    if !validation.is_empty() {
        // Keep what is already in place: withdrawing protection because of a typo would
        // expose the app. The status says what to fix.
        let msg = validation.join("; ");
        let status = status(
            policy,
            &targets,
            0,
            None,
            (false, reason::INVALID, &msg),
            (false, reason::INVALID, &msg),
            now,
        );
        out.status = changed(policy, status);
        return out;
    }

    // Which Deployments are ours, and which another (older) policy already protects.
    let mut owned = BTreeMap::new();
    let mut conflicts = Vec::new();
    let winners = resolve::winners(cache, &res.workloads.keys().cloned().collect());
    for (dkey, w) in &res.workloads {
        match winners.get(dkey) {
            Some(win) if ObjKey::of(win.as_ref()) != me => {
                let winner = ObjKey::of(win.as_ref());
                let in_ns =
                    |t: &crate::api::TargetStatus| t.service.as_deref().is_some_and(|s| s.starts_with(&format!("{}/", dkey.namespace)));
                for t in targets
                    .iter_mut()
                    .filter(|t| t.deployment.as_deref() == Some(&dkey.name) && in_ns(t))
                {
                    t.state = TargetState::Conflicted;
                    t.message = format!("Deployment {dkey} is already protected by AuthPolicy {winner} (the oldest policy wins)");
                }
                conflicts.push((dkey.clone(), winner));
            }
            _ => {
                owned.insert(dkey.clone(), w.clone());
            }
        }
    }

    // The generated cookie secret, one per namespace with a protected Deployment.
    if render::uses_generated_cookie_secret(policy) {
        let name = render::generated_cookie_secret_name(policy);
        let namespaces: BTreeSet<&str> = owned.keys().map(|k| k.namespace.as_str()).collect();
        for ns in namespaces {
            let key = ObjKey::new(ns, &name);
            if cache.secret_digest(&key).is_none() {
                out.create_secrets.push(key);
            }
        }
    }

    for dkey in owned.keys() {
        for r in render::secret_refs(policy) {
            out.touched.secrets.insert(ObjKey::new(&dkey.namespace, r.name));
        }
    }
    let mut ready_workloads = BTreeSet::new();
    for (dkey, w) in &owned {
        let desired = render::deployment_patch(policy, w, &res.hostnames, opts, cache);
        let live = w.deployment.applied_fields();
        if merge::contains(&live, &desired) {
            if assume_rolled_out || rolled_out(&w.deployment) {
                ready_workloads.insert(dkey.clone());
            }
        } else {
            out.deployment_applies.push(Apply {
                key: dkey.clone(),
                body: desired,
            });
            if assume_rolled_out {
                ready_workloads.insert(dkey.clone());
            }
        }
    }
    if !out.deployment_applies.is_empty() {
        let names: Vec<String> = out.deployment_applies.iter().map(|a| a.key.to_string()).collect();
        out.events.push(EventSpec {
            warning: false,
            reason: event::INJECTED.into(),
            note: format!("sidekey-proxy sidecar applied to Deployment {}", names.join(", ")),
        });
        if opts.mode == render::SidecarMode::Regular {
            out.events.push(EventSpec {
                warning: true,
                reason: event::REGULAR_SIDECAR.into(),
                note: "this cluster predates native sidecars (Kubernetes 1.29): sidekey-proxy runs as a regular container and may start after the app".into(),
            });
        }
    }

    // A Service is switched to the sidecar only once every Deployment behind it runs the
    // sidecar, so traffic never lands on a pod without the named port (no outage), and only
    // if all of them are ours (two policies never fight over one Service).
    let mut by_service: BTreeMap<ObjKey, Vec<&ObjKey>> = BTreeMap::new();
    for (dkey, w) in &res.workloads {
        for b in &w.bindings {
            by_service.entry(b.service.clone()).or_default().push(dkey);
        }
    }
    // A Service already switched stays switched while a Deployment behind it rolls out again
    // (a policy edit, a new Deployment): its pods without the sidecar port simply get no
    // traffic until they have it. Switching back and forth would open the app meanwhile.
    let already: BTreeSet<&ObjKey> = patched.services.iter().map(|(k, _)| k).collect();
    let switchable: BTreeSet<ObjKey> = by_service
        .iter()
        .filter(|(s, ds)| {
            ds.iter()
                .all(|d| owned.contains_key(*d) && (already.contains(s) || ready_workloads.contains(*d)))
        })
        .map(|(s, _)| s.clone())
        .collect();
    let service_patches = render::service_patches(policy, owned.values());
    let mut protected_services = BTreeSet::new();
    // Services whose switch another tool keeps reverting: left alone for now, never restored.
    let mut contested: BTreeMap<ObjKey, String> = BTreeMap::new();
    for (skey, mut patch) in service_patches {
        if !switchable.contains(&skey) {
            continue;
        }
        let live_svc = cache.service(&skey);
        let live = live_svc
            .as_ref()
            .map(|s| serde_json::to_value(s.as_ref()).expect("service serializes"));
        if !live.is_some_and(|l| merge::contains(&l, &patch)) {
            if let (true, Some(svc)) = (already.contains(&skey), &live_svc) {
                // We switched it before and it is back: someone reverted our targetPort.
                let reverts = count_revert(svc, now);
                if reverts.count > MAX_RESWITCHES {
                    contested.insert(skey.clone(), fight_message(&skey, &reverts));
                    continue;
                }
                patch["metadata"]["annotations"][ANNOTATION_REVERTS] =
                    Value::from(serde_json::to_string(&reverts).expect("json serializes"));
            }
            out.service_applies.push(Apply {
                key: skey.clone(),
                body: patch,
            });
        }
        protected_services.insert(skey);
    }

    for t in targets.iter_mut() {
        let (Some(svc), Some(dep)) = (&t.service, &t.deployment) else {
            continue;
        };
        if t.state == TargetState::Pending {
            let Some(svc_key) = svc.split_once('/').map(|(n, s)| ObjKey::new(n, s)) else {
                continue;
            };
            let dkey = ObjKey::new(&svc_key.namespace, dep);
            if protected_services.contains(&svc_key) && ready_workloads.contains(&dkey) {
                t.state = TargetState::Protected;
            } else if let Some(msg) = contested.get(&svc_key) {
                t.message = msg.clone();
            } else {
                t.message = "waiting for the Deployment to roll out with the sidecar before switching the Service".into();
            }
        }
    }

    // Undo what an earlier version of this policy did and no longer wants.
    for (skey, originals) in &patched.services {
        if !protected_services.contains(skey) && !contested.contains_key(skey) {
            out.service_restores.push(Apply {
                key: skey.clone(),
                body: render::service_restore_patch(skey, originals),
            });
        }
    }
    for dkey in &patched.deployments {
        if !owned.contains_key(dkey) {
            out.deployment_releases.push(Apply {
                key: dkey.clone(),
                body: render::release_patch("apps/v1", "Deployment", dkey),
            });
        }
    }
    if !out.deployment_releases.is_empty() {
        let keys: Vec<&ObjKey> = out.deployment_releases.iter().map(|a| &a.key).collect();
        out.events.push(removed_event(&keys));
    }

    let protected = owned
        .keys()
        .filter(|d| ready_workloads.contains(*d) && owned[*d].bindings.iter().all(|b| protected_services.contains(&b.service)))
        .count();
    let subjects = policy.spec.provider.workload_identity.as_ref().map(|wi| WorkloadIdentityStatus {
        subjects: owned
            .iter()
            .map(|(k, w)| format!("system:serviceaccount:{}:{}", k.namespace, w.service_account))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        audience: wi.audience.clone().unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
        issuer: opts.service_account_issuer.clone(),
        issuer_hint: opts
            .service_account_issuer
            .is_none()
            .then(|| "the cluster's service-account issuer: kubectl get --raw /.well-known/openid-configuration".into()),
    });

    let accepted = if owned.is_empty() && !conflicts.is_empty() {
        let (d, w) = &conflicts[0];
        let msg = format!("Deployment {d} is already protected by AuthPolicy {w} (the oldest policy wins)");
        (false, reason::CONFLICTED, msg)
    } else if owned.is_empty() && targets.iter().any(|t| t.state == TargetState::RefNotPermitted) {
        (
            false,
            reason::REF_NOT_PERMITTED,
            first_message(&targets, TargetState::RefNotPermitted),
        )
    } else if owned.is_empty() {
        let msg = targets
            .iter()
            .find(|t| !t.message.is_empty())
            .map(|t| t.message.clone())
            .unwrap_or_else(|| "no target found".into());
        (false, reason::TARGET_NOT_FOUND, msg)
    } else {
        (true, reason::ACCEPTED, format!("protecting {} Deployment(s)", owned.len()))
    };
    let all_protected = !targets.is_empty() && targets.iter().all(|t| t.state == TargetState::Protected);
    let ready = if !accepted.0 {
        (false, accepted.1, accepted.2.clone())
    } else if let Some(msg) = contested.values().next() {
        (false, reason::SERVICE_REVERTED, msg.clone())
    } else if all_protected {
        (true, reason::READY, "every target is protected".to_string())
    } else if let Some(t) = targets
        .iter()
        .find(|t| !matches!(t.state, TargetState::Protected | TargetState::Pending))
    {
        (false, reason::TARGETS_NOT_READY, t.message.clone())
    } else if let Some((dkey, why)) = sidecar_failures.iter().find(|(d, _)| owned.contains_key(*d)) {
        (false, reason::SIDECAR_FAILING, format!("Deployment {dkey}: {why}"))
    } else {
        (
            false,
            reason::ROLLOUT_PENDING,
            "waiting for Deployments to roll out with the sidecar".to_string(),
        )
    };
    if !conflicts.is_empty() {
        let note = conflicts
            .iter()
            .map(|(d, w)| format!("{d} (protected by {w})"))
            .collect::<Vec<_>>()
            .join(", ");
        let was = policy
            .status
            .as_ref()
            .is_some_and(|s| s.targets.iter().any(|t| t.state == TargetState::Conflicted));
        if !was {
            out.events.push(EventSpec {
                warning: true,
                reason: "Conflicted".into(),
                note: format!("not protecting {note}: an older AuthPolicy already does"),
            });
        }
    }
    if let Some(msg) = contested.values().next() {
        let was = policy
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY))
            .is_some_and(|c| c.reason == reason::SERVICE_REVERTED);
        if !was {
            out.events.push(EventSpec {
                warning: true,
                reason: reason::SERVICE_REVERTED.into(),
                note: msg.clone(),
            });
        }
    }
    let st = status(
        policy,
        &targets,
        protected as i32,
        subjects,
        (accepted.0, accepted.1, &accepted.2),
        (ready.0, ready.1, &ready.2),
        now,
    );
    out.status = changed(policy, st);
    out
}

/// The Event for sidecars taken out of Deployments.
pub fn removed_event(deployments: &[&ObjKey]) -> EventSpec {
    let names: Vec<String> = deployments.iter().map(|d| d.to_string()).collect();
    EventSpec {
        warning: false,
        reason: event::REMOVED.into(),
        note: format!("sidekey-proxy sidecar removed from Deployment {}", names.join(", ")),
    }
}

fn first_message(targets: &[crate::api::TargetStatus], state: TargetState) -> String {
    targets
        .iter()
        .find(|t| t.state == state)
        .map(|t| t.message.clone())
        .unwrap_or_default()
}

fn status_condition(policy: &AuthPolicy, type_: &str, (ok, reason, message): (bool, &str, &str), now: jiff::Timestamp) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let previous = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: policy.metadata.generation,
        last_transition_time: previous.map(|c| c.last_transition_time.clone()).unwrap_or(Time(now)),
    }
}

fn status(
    policy: &AuthPolicy,
    targets: &[crate::api::TargetStatus],
    protected: i32,
    workload_identity: Option<WorkloadIdentityStatus>,
    accepted: (bool, &str, &str),
    ready: (bool, &str, &str),
    now: jiff::Timestamp,
) -> AuthPolicyStatus {
    AuthPolicyStatus {
        observed_generation: policy.metadata.generation,
        conditions: vec![
            status_condition(policy, condition::ACCEPTED, accepted, now),
            status_condition(policy, condition::READY, ready, now),
        ],
        target_count: policy.spec.target_refs.len() as i32,
        protected,
        targets: targets.to_vec(),
        workload_identity,
    }
}

/// The new status, or `None` when it equals the current one (timestamps aside).
fn changed(policy: &AuthPolicy, new: AuthPolicyStatus) -> Option<AuthPolicyStatus> {
    fn strip(s: &AuthPolicyStatus) -> AuthPolicyStatus {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    }
    match &policy.status {
        Some(old) if strip(old) == strip(&new) => None,
        _ => Some(new),
    }
}

#[cfg(test)]
mod tests;
