#!/usr/bin/env bash
# The whole product on a real single-node Kubernetes, then the command, then a clean uninstall:
#
#   tests/e2e/with-node.sh cargo test -p sidekey-controller --test e2e     (make e2e)
#
# 0. builds what it needs first (`make dist`, incremental; the images; the echo app).
# 1. `cluster up --node` from the rig in $SIDEKEY_KUBE_BIN (default ../shared/kube beside this
#    checkout): kubelet, containerd, scheduler, kube-proxy; state in $SIDEKEY_E2E_STATE
#    (default /tmp/sidekey-e2e), the rig's default ports (tests/k8s/with-cluster.sh uses others).
# 2. the two product images of scripts/images.py (what `make images` builds) and the echo
#    app's, loaded into the node with `cluster load`.
# 3. the Gateway API CRDs, then `helm install --wait` of charts/sidekey with the real helm:
#    the local images (pullPolicy Never), 2 replicas, leader election on.
# 4. the command, with SIDEKEY_E2E_KUBECONFIG, SIDEKEY_E2E_STATE and SIDEKEY_E2E_NAMESPACE
#    (the release's) set; the e2e tests skip loudly without them.
# 5. `helm uninstall --wait`, then no controller object may be left (Deployment, Pods,
#    ServiceAccount, RBAC, and the Lease, which goes with its owner Pod), then `cluster down`
#    (in a trap, whatever happened). Timings per phase go to stderr.
#
# Without the rig or root it skips (one loud line) and runs nothing; with CI=true it fails.
# SIDEKEY_E2E_REUSE_DIST=1 skips `make dist` (to iterate on the tests with the binaries
# already in dist/). The IdP's and the controllers' logs stay in /tmp/sidekey-e2e-logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

rig=${SIDEKEY_KUBE_BIN:-$(cd .. && pwd)/shared/kube}
skip() {
  [ "${CI:-}" = true ] && { echo "e2e: $1; CI needs it" >&2; exit 1; }
  echo "e2e: SKIPPING the end-to-end tests on a real node: $1" >&2
  exit 0
}
[ -x "$rig/cluster" ] || skip "no Kubernetes rig at $rig (put shared/kube beside this checkout or set SIDEKEY_KUBE_BIN)"
[ "$(id -u)" = 0 ] || skip "the node rig in $rig needs root"
[ $# -gt 0 ] || { echo "usage: tests/e2e/with-node.sh COMMAND..." >&2; exit 2; }

export KUBE_STATE=${SIDEKEY_E2E_STATE:-/tmp/sidekey-e2e}
export KUBECONFIG=$KUBE_STATE/kubeconfig
kubectl=$repo/.tools/bin/kubectl
helm=$repo/.tools/bin/helm
[ -x "$helm" ] && [ -x "$kubectl" ] || { echo "e2e: .tools/bin/helm and kubectl missing: run tests/setup.sh (make setup)" >&2; exit 1; }
release=sidekey
namespace=sidekey-system
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
registry=ghcr.io/sidekey-dev
tag=v$version
echo_image=sidekey.test/echo:e2e

# The API server's audit log of every request a ServiceAccount makes: how the end shows
# that the controller's RBAC sufficed (no request denied by authorization) and, when the
# Lease is left behind, what its release got.
audit=$KUBE_STATE-audit
mkdir -p "$audit"
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
# audited USER [FILTER]: the audited requests of USER as "time verb uri code decision", the
# ones FILTER (a Python expression on e) keeps, except those in a window a test listed in
# $audit/excused ("FROM TO WHY" per line: the API server restarting, when it refuses
# everyone until its RBAC cache has synced).
audited() {
  python3 - "$audit/audit.log" "$audit/excused" "$1" "${2:-True}" <<'PY'
import json, os, sys
from datetime import datetime
path, excused, user, keep = sys.argv[1:]
windows = []
if os.path.exists(excused):
    for line in open(excused):
        start, end = line.split()[:2]
        windows.append((datetime.fromisoformat(start), datetime.fromisoformat(end)))
def excused_at(t):
    t = datetime.fromisoformat(t)
    return any(start <= t <= end for start, end in windows)
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("user", {}).get("username") != user or e.get("stage") != "ResponseComplete":
        continue
    if eval(keep, {"e": e}) and not excused_at(e["stageTimestamp"]):
        print(e["stageTimestamp"], e["verb"], e["requestURI"], e.get("responseStatus", {}).get("code"),
              e.get("annotations", {}).get("authorization.k8s.io/decision", ""))
PY
}
cluster() { "$rig/cluster" "$@"; }
# One node per VM (its iptables chains and the kubelet's device-plugin socket are VM-wide):
# a second run waits for the first instead of tearing its node down.
exec 9>/tmp/sidekey-e2e-node.lock
if ! flock -n 9; then
  echo "e2e: another tests/e2e/with-node.sh holds the node; waiting for it (up to 15 min)" >&2
  flock -w 900 9 || { echo "e2e: the node stayed busy for 15 min" >&2; exit 1; }
fi
timings=()
phase_start=$(date +%s%3N)
phase() { # phase NAME: ends the running phase under NAME
  local now
  now=$(date +%s%3N)
  timings+=("$1 $(((now - phase_start) / 1000)).$(((now - phase_start) % 1000 / 100))s")
  phase_start=$now
}
report() { [ ${#timings[@]} = 0 ] || echo "e2e timings: $(IFS=,; echo "${timings[*]}" | sed 's/,/, /g')" >&2; }

dump() {
  echo "e2e: --- cluster state at the failure ---" >&2
  "$kubectl" get pods -A -o wide >&2 2>&1 || true
  "$kubectl" get authpolicies -A -o wide >&2 2>&1 || true
  for pod in $("$kubectl" -n "$namespace" get pods -o name 2>/dev/null); do
    echo "--- $pod (last 30 lines) ---" >&2
    "$kubectl" -n "$namespace" logs "$pod" --tail=30 >&2 2>&1 || true
  done
}
cleanup() {
  local rc=$?
  if [ $rc != 0 ] && [ -f "$KUBECONFIG" ]; then dump; fi
  [ -z "${echo_root:-}" ] || rm -rf "$echo_root"
  phase_start=$(date +%s%3N)
  cluster down >/dev/null 2>&1 || true
  phase "cluster down"
  report
  exit $rc
}
trap cleanup EXIT
cluster down >/dev/null 2>&1 || true
: >"$audit/audit.log"
rm -f "$audit/excused"

# 0. Everything built before the node starts: the release binaries (`make dist`,
# incremental), the product images as `make images` builds them, and the echo app's.
phase_start=$(date +%s%3N)
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "${SIDEKEY_E2E_REUSE_DIST:-}" = 1 ]; then
  echo "e2e: SIDEKEY_E2E_REUSE_DIST=1: testing the binaries already in dist/, whatever the sources say" >&2
else
  scripts/dist.sh >/dev/null
fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build -q --release --locked --target "$host" -p sidekey-echo
phase "build (make dist)"
scripts/images.py --registry "$registry" --tag "$tag" >&2
echo_root=$(mktemp -d)
install -D -m 0555 "${CARGO_TARGET_DIR:-target}/$host/release/sidekey-echo" "$echo_root/sidekey-echo"
phase "images"

# 1. The node.
if ! cluster up --node >/dev/null 2>"$KUBE_STATE.up.log"; then
  cat "$KUBE_STATE.up.log" >&2
  echo "e2e: the node did not come up (logs in $KUBE_STATE/logs)" >&2
  exit 1
fi
phase "cluster up"

# 2. The images into the node.
cluster image "$echo_image" "$echo_root" /sidekey-echo >/dev/null
cluster load dist/images/sidekey-proxy.oci.tar dist/images/sidekey-controller.oci.tar >/dev/null
phase "load images"

# 3. Gateway API, then the chart as a user installs it.
"$kubectl" apply --server-side -f "$repo/../shared/k8s/gateway-api-v1.6.1/" >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/httproutes.gateway.networking.k8s.io >/dev/null
if ! "$helm" install "$release" charts/sidekey --namespace "$namespace" --create-namespace --wait --timeout 3m \
  --set replicaCount=2 --set leaderElection.enabled=true \
  --set image.repository="$registry/sidekey-controller" --set image.tag="$tag" --set image.pullPolicy=Never \
  --set proxy.image.repository="$registry/sidekey-proxy" --set proxy.image.tag="$tag" \
  --set-string 'logLevel=info\,sidekey_controller=debug' >/dev/null; then
  echo "e2e: helm install --wait failed" >&2
  exit 1
fi
phase "helm install"

# 4. The tests.
SIDEKEY_E2E_KUBECONFIG=$KUBECONFIG SIDEKEY_E2E_STATE=$KUBE_STATE SIDEKEY_E2E_NAMESPACE=$namespace "$@"
phase "tests"
sa=$("$kubectl" -n "$namespace" get deployment -l "app.kubernetes.io/instance=$release" -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
controller_user=system:serviceaccount:$namespace:$sa
denied=$(audited "$controller_user" 'e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"')
[ -z "$denied" ] || { echo "e2e: the chart's RBAC refused the controller:"$'\n'"$denied" >&2; exit 1; }
echo "e2e: the controller made $(audited "$controller_user" | wc -l) API requests under the chart's RBAC, none refused" >&2

# 5. Uninstall: nothing of the controller may be left. The controllers' last words are kept
# in $logs (their pods, and with them `kubectl logs`, are gone afterwards).
logs=${SIDEKEY_E2E_LOGS:-/tmp/sidekey-e2e-logs}
mkdir -p "$logs"
followers=()
for pod in $("$kubectl" -n "$namespace" get pods -l "app.kubernetes.io/instance=$release" -o name); do
  "$kubectl" -n "$namespace" logs -f "$pod" >"$logs/${pod#pod/}.log" 2>&1 &
  followers+=($!)
done
"$kubectl" -n "$namespace" get lease sidekey-controller -o yaml >"$logs/lease-before-uninstall.yaml" 2>&1 || true
"$helm" uninstall "$release" --namespace "$namespace" --wait --timeout 2m >/dev/null
phase "helm uninstall"
left=""
for _ in $(seq 1 600); do
  left=$("$kubectl" -n "$namespace" get deployments,replicasets,pods,serviceaccounts,roles,rolebindings,services,poddisruptionbudgets \
    -l "app.kubernetes.io/instance=$release" -o name 2>&1)
  left+=$("$kubectl" get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance=$release" -o name 2>&1)
  [ -z "$left" ] && break
  sleep 0.1
done
phase "controller pods gone"
for f in "${followers[@]}"; do kill "$f" 2>/dev/null || true; done
[ -z "$left" ] || { echo "e2e: helm uninstall left controller objects behind:"$'\n'"$left" >&2; exit 1; }
# The Lease is owned by the Pod that held it last: the garbage collector deletes it with that
# Pod (the leader's own release is usually refused: helm removes the RBAC in the same pass).
for _ in $(seq 1 100); do
  "$kubectl" -n "$namespace" get lease sidekey-controller >/dev/null 2>&1 || break
  sleep 0.1
done
if "$kubectl" -n "$namespace" get lease sidekey-controller >/dev/null 2>&1; then
  lease=$("$kubectl" -n "$namespace" get lease sidekey-controller -o jsonpath='holder={.spec.holderIdentity} owners={.metadata.ownerReferences[*].name}')
  echo "e2e: the Lease sidekey-controller is still there 10 s after helm uninstall ($lease): it should go with its owner Pod" >&2
  holder=$("$kubectl" -n "$namespace" get lease sidekey-controller -o jsonpath='{.spec.holderIdentity}')
  [ -z "$holder" ] || { echo "e2e: its holder's log ($logs/$holder.log) ends:" >&2; tail -n 5 "$logs/$holder.log" >&2 || true; }
  echo "e2e: the last Lease requests (audit log: time, verb, URI, status, authorization):" >&2
  audited "$controller_user" '"/leases" in e["requestURI"]' | tail -n 4 >&2
  exit 1
fi
echo "e2e: helm uninstall left no controller object" >&2
