//! Leader election on a `coordination.k8s.io` Lease, client-go style: acquire when free or
//! expired, renew every 5 s, and end [`run`] if another replica took the Lease (the kubelet
//! restarts this one as a follower). Optimistic concurrency (resourceVersion) makes two replicas never
//! both win. A renewal that cannot reach the API server does not end the process: the
//! [`WriteGate`] stops this replica's writes before the Lease could expire, and the next
//! successful renewal reopens it.

use super::*;

pub const LEASE_NAME: &str = "sidekey-controller";

/// Who holds the Lease: the Pod's name, and in a cluster its uid, which makes the Pod the
/// Lease's owner. `helm uninstall` deletes the RBAC in the same pass as the Deployment,
/// so the leader's own release on SIGTERM is refused (403) on a real node; as a dependent
/// of the holder Pod, the Lease goes with it instead of naming a gone holder for ever.
#[derive(Clone, Debug)]
pub struct Holder {
    pub name: String,
    pub pod_uid: Option<String>,
}

impl Holder {
    fn owner(&self) -> Option<serde_json::Value> {
        let uid = self.pod_uid.as_deref().filter(|u| !u.is_empty())?;
        Some(serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": uid}]))
    }
}
pub const DURATION: i32 = 15;
/// Writes stop this long before the Lease could expire in another replica's eyes: room
/// for the renewal's own latency and for clock skew between the replicas.
const MARGIN: Duration = Duration::from_secs(3);
const RENEW_EVERY: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_secs(2);

fn validity() -> Duration {
    Duration::from_secs(DURATION as u64) - MARGIN
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn expired(l: &Lease) -> bool {
    let Some(spec) = &l.spec else { return true };
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(t), Some(d)) => t.0 + jiff::SignedDuration::from_secs(d as i64) < jiff::Timestamp::now(),
        _ => true,
    }
}

/// One attempt: true when `me` holds the lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, holder: &Holder) -> Result<bool, kube::Error> {
    let me = holder.name.as_str();
    let owners = holder.owner();
    let lease = match api.get_opt(LEASE_NAME).await? {
        Some(l) => l,
        None => {
            let l: Lease = serde_json::from_value(serde_json::json!({
                "metadata": {"name": LEASE_NAME, "ownerReferences": owners},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": DURATION, "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0},
            }))
            .expect("lease shape");
            return match api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != me && !holder.is_empty() && !expired(&lease) {
        return Ok(false);
    }
    let mut next = lease.clone();
    if let Some(o) = owners {
        next.metadata.owner_references = Some(serde_json::from_value(o).expect("owner reference shape"));
    }
    let s = next.spec.get_or_insert_with(Default::default);
    if holder != me {
        s.acquire_time = Some(now());
        s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    s.holder_identity = Some(me.into());
    s.lease_duration_seconds = Some(DURATION);
    s.renew_time = Some(now());
    match api.replace(LEASE_NAME, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Returns once `me` holds the Lease (retrying every 2 s while another replica does).
pub async fn acquire(client: &Client, ns: &str, me: &Holder, gate: &WriteGate) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    tracing::info!(lease = LEASE_NAME, namespace = ns, identity = me.name, "waiting for leadership");
    loop {
        let sent = std::time::Instant::now();
        match try_acquire(&api, me).await {
            Ok(true) => {
                gate.renewed(sent, validity());
                tracing::info!(identity = me.name, "became leader");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Renews the Lease until another replica has taken it: then closes the gate and returns.
pub async fn renew(client: Client, ns: String, me: Holder, gate: WriteGate) {
    let api: Api<Lease> = Api::namespaced(client, &ns);
    let mut failing = false;
    loop {
        tokio::time::sleep(if failing { RETRY_EVERY } else { RENEW_EVERY }).await;
        let sent = std::time::Instant::now();
        match try_acquire(&api, &me).await {
            Ok(true) => {
                gate.renewed(sent, validity());
                if failing {
                    tracing::info!("lease renewed again; writes resume");
                }
                failing = false;
            }
            Ok(false) => {
                gate.close();
                return;
            }
            Err(e) => {
                if !failing || !gate.is_open() {
                    tracing::warn!(error = %e, writes_paused = !gate.is_open(), "renewing the lease");
                }
                failing = true;
            }
        }
    }
}

/// Hands over at once on a clean shutdown instead of making the other replica wait out the lease.
/// Refused when the RBAC went first (`helm uninstall`): then the Lease goes with this
/// Pod, its owner, or the next leader waits out its 15 s.
pub async fn release(client: &Client, ns: &str, me: &Holder) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let result = match api.get_opt(LEASE_NAME).await {
        Ok(Some(mut l)) if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me.name.as_str()) => {
            let s = l.spec.get_or_insert_with(Default::default);
            s.holder_identity = None;
            s.lease_duration_seconds = Some(1);
            api.replace(LEASE_NAME, &PostParams::default(), &l).await.map(|_| ())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!("released the lease"),
        Err(e) if me.owner().is_some() => {
            tracing::info!(error = %e, "could not release the lease; it is deleted with this Pod, its owner")
        }
        Err(e) => tracing::warn!(error = %e, "could not release the lease; the next leader waits for it to expire"),
    }
}
