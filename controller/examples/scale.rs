//! The controller scale run of `make bench`: 1,000 AuthPolicies, each protecting 5
//! Deployments behind one HTTPRoute, through the real controller loop (reflector caches,
//! watch-to-policy mappings, kube's scheduler, the reconciler) against a simulated API
//! server. The simulated server keeps every object, answers writes as the API server
//! does (merge patches with resourceVersion checks, server-side apply, creates with 409),
//! finishes each Deployment rollout at once, and feeds every change back through the
//! watch streams.
//!
//! It measures the time to converge from cold, the writes that took (against the minimum
//! a policy needs), the writes of a full resync (every watch relisted: must be 0), the
//! pure core alone (resolve + render + diff of every policy over the converged cache),
//! and the process's peak RSS, simulated server included. Prints one JSON line.
//!
//! `cargo run --release -p sidekey-controller --example scale [policies]`

#[path = "../tests/sim/mod.rs"]
mod sim;

/// The allocator of the `sidekey-controller` binary, counting live bytes so the report
/// can tell data the controller holds from memory the allocator keeps.
#[global_allocator]
static ALLOCATOR: sim::Counting = sim::Counting;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let policies: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    println!("{}", sim::scale_run(policies).await);
}
