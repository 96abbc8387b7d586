//! The whole product on a real single-node Kubernetes (the `shared/kube` rig with `--node`):
//! the chart installed with the real helm from the images `make images` builds, the
//! controller running as a Pod under its ServiceAccount with leader election, the kubelet
//! starting the injected native sidecar and writing the projected token the proxy logs in
//! with, and headless Chromium signing in through the Service's ClusterIP.
//!
//! Run through `tests/e2e/with-node.sh` (`make e2e`; `make test` runs it when the rig is
//! there), which starts the node, loads the images, installs the chart, and uninstalls and
//! tears everything down after; see that script. Without it these tests skip loudly.
//!
//! On the host: an OpenID provider (tests/idp/server.mjs) with https on the node's bridge
//! address, where pods reach it, behind a test CA the policy's `provider.caBundle` carries;
//! as Entra ID's token endpoint it accepts the proxy's federated `client_assertion` only
//! after verifying it against the cluster's own JWKS. And a Redis on the same address.

#[path = "../kube_real/support.rs"]
mod support;

/// `support::rig()` reads these; `tests/e2e/with-node.sh` sets them.
pub const RIG_ENV: support::RigEnv = support::RigEnv {
    kubeconfig: "SIDEKEY_E2E_KUBECONFIG",
    state: "SIDEKEY_E2E_STATE",
    what: "end-to-end tests on a real node",
    how: "tests/e2e/with-node.sh cargo test -p sidekey-controller --test e2e",
    required_in_ci: false,
};

mod controller_pod;
mod echo;
mod host;
mod login;
