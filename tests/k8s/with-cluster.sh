#!/usr/bin/env bash
# Runs a command with a real Kubernetes API server up (envtest-style), then tears it down.
#
#   tests/k8s/with-cluster.sh cargo test --workspace
#
# The control plane (etcd, kube-apiserver, kube-controller-manager; no node) comes from the
# `cluster` script in $SIDEKEY_KUBE_BIN, else ../shared/kube beside this checkout. The command
# sees SIDEKEY_KUBECONFIG (admin) and SIDEKEY_KUBE_STATE; the real-cluster tests
# (controller/tests/kube_real) use them and skip, loudly, when they are absent.
# In CI (CI=true) a missing rig fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/../.."

rig=${SIDEKEY_KUBE_BIN:-$(cd .. && pwd)/shared/kube}
if [ ! -x "$rig/cluster" ]; then
  if [ "${CI:-}" = true ]; then
    echo "with-cluster: no Kubernetes test rig at $rig (set SIDEKEY_KUBE_BIN to the folder with 'cluster'); CI needs it" >&2
    exit 1
  fi
  echo "with-cluster: SKIPPING the real-Kubernetes tests: no rig at $rig. Put the shared/kube folder beside this checkout or set SIDEKEY_KUBE_BIN." >&2
  exec "$@"
fi
if [ "$(id -u)" != 0 ]; then
  [ "${CI:-}" = true ] && { echo "with-cluster: the Kubernetes rig needs root" >&2; exit 1; }
  echo "with-cluster: SKIPPING the real-Kubernetes tests: the rig in $rig needs root." >&2
  exec "$@"
fi

# Its own state directory and ports, so a cluster someone runs by hand on the defaults
# (e.g. for `make e2e`) is left alone.
export KUBE_STATE=${SIDEKEY_KUBE_STATE:-/tmp/sidekey-kube-test}
export KUBE_APISERVER_PORT=${SIDEKEY_KUBE_APISERVER_PORT:-26443}
export KUBE_ETCD_PORT=26379 KUBE_ETCD_PEER_PORT=26380 KUBE_ETCD_METRICS_PORT=26381 KUBE_KCM_PORT=26257
# The audit log is how the tests prove least privilege: every request a ServiceAccount
# makes, with the status the server answered (403 included).
audit=$KUBE_STATE-audit
mkdir -p "$audit"
: >"$audit/audit.log"
cat >"$audit/policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
POLICY
export KUBE_APISERVER_EXTRA_ARGS="--audit-policy-file=$audit/policy.yaml --audit-log-path=$audit/audit.log --audit-log-mode=blocking"
export SIDEKEY_AUDIT_LOG=$audit/audit.log
cluster() { "$rig/cluster" "$@"; }
cleanup() {
  local rc=$?
  if [ $rc != 0 ] && [ -d "$KUBE_STATE/logs" ]; then
    echo "with-cluster: command failed (rc=$rc); last apiserver log lines:" >&2
    tail -n 20 "$KUBE_STATE/logs/kube-apiserver.log" >&2 || true
  fi
  cluster down >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT
cluster down >/dev/null 2>&1 || true
start=$(date +%s)
if ! cluster up >/dev/null 2>"$KUBE_STATE.up.log"; then
  cat "$KUBE_STATE.up.log" >&2
  echo "with-cluster: the control plane did not come up" >&2
  exit 1
fi
echo "with-cluster: Kubernetes $("$KUBE_STATE/bin/kube-apiserver" --version 2>/dev/null | awk '{print $2}') API server up on 127.0.0.1:$KUBE_APISERVER_PORT in $(($(date +%s) - start)) s" >&2
export SIDEKEY_KUBECONFIG=$KUBE_STATE/kubeconfig SIDEKEY_KUBE_STATE=$KUBE_STATE
"$@"
