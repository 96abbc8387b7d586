//! sidekey against a real Kubernetes API server (v1.36 from the `shared/kube` rig): the CRD
//! and install manifests as the server accepts them, every schema and CEL rule as the server
//! enforces it, and the controller binary's whole life under the chart's own RBAC, with
//! leader election and an API server that goes away mid-rollout.
//!
//! Run through `tests/k8s/with-cluster.sh` (`make test` does); see support.rs.

mod support;

/// `support::rig()` reads these (the e2e tests, sharing support.rs, read their own).
pub const RIG_ENV: support::RigEnv = support::RigEnv {
    kubeconfig: "SIDEKEY_KUBECONFIG",
    state: "SIDEKEY_KUBE_STATE",
    what: "real-Kubernetes tests",
    how: "tests/k8s/with-cluster.sh cargo test -p sidekey-controller --test kube_real",
    required_in_ci: true,
};

mod controller;
mod schema;
