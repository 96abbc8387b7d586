#!/usr/bin/env bash
# Every object the controller renders must be accepted by a real API server: the golden
# outputs are checked with kubernetes-validate (official schemas, strict) for the oldest and
# newest Kubernetes versions each sidecar mode supports, and every custom resource in the
# golden inputs against its CRD (ours, and the official Gateway API v1.6.1 CRDs).
set -euo pipefail
cd "$(dirname "$0")/../.."
kv=.tools/venv/bin/kubernetes-validate
py=.tools/venv/bin/python
golden=controller/tests/golden
gateway_crds=(../shared/k8s/gateway-api-v1.6.1/gateway.networking.k8s.io_httproutes.yaml ../shared/k8s/gateway-api-v1.6.1/gateway.networking.k8s.io_referencegrants.yaml)
native=() regular=()
for dir in "$golden"/*/; do
  if [ "$(cat "$dir/mode" 2>/dev/null)" = regular ]; then regular+=("$dir/output.yaml"); else native+=("$dir/output.yaml"); fi
done

# Native sidecars (restartPolicy on an init container) exist from 1.29 (beta, on by default).
for v in 1.29.0 1.37.0; do "$kv" --strict --quiet -k "$v" "${native[@]}"; done
for v in 1.25.0 1.37.0; do "$kv" --strict --quiet -k "$v" "${regular[@]}"; done
for v in 1.25.0 1.37.0; do "$kv" --strict --quiet -k "$v" crds/sidekey.dev_authpolicies.yaml; done
# The check must be able to fail: native sidecars are rejected by a 1.25 API server.
if "$kv" --strict --quiet -k 1.25.0 "${native[0]}" >/dev/null 2>&1; then
  echo "validate: a native sidecar was accepted for Kubernetes 1.25; the schema check is broken" >&2
  exit 1
fi
echo "ok: rendered objects valid for Kubernetes 1.29/1.37 (native) and 1.25/1.37 (regular)"

"$py" tests/k8s/validate_crs.py crds/sidekey.dev_authpolicies.yaml "${gateway_crds[@]}" -- "$golden"/*/input.yaml

# The user-facing examples: their objects, their custom resources, and their renders.
for v in 1.29.0 1.37.0; do "$kv" --strict --quiet --no-warn -k "$v" manifests/examples/*.yaml manifests/examples/rendered/*.yaml; done
"$py" tests/k8s/validate_crs.py crds/sidekey.dev_authpolicies.yaml "${gateway_crds[@]}" -- manifests/examples/*.yaml
echo "ok: manifests/examples and their renders valid for Kubernetes 1.29/1.37"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf 'apiVersion: sidekey.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: x}\nspec:\n  targetRefs: [{kind: Service, name: s}]\n  provider: {type: oidc, issuerURL: "https://i", clientID: c, clientSecret: oops}\n  access: {emailDomains: [x]}\n' >"$tmp"
"$py" tests/k8s/validate_crs.py crds/sidekey.dev_authpolicies.yaml --expect-invalid -- "$tmp"

# The Helm chart (lint, scenarios, schema, bad values) and the kustomize install.
"$py" tests/k8s/chart_test.py

# Argo CD: the AuthPolicy health check against its health_test.yaml, and the manifests.
"$py" tests/k8s/argocd_health_test.py
