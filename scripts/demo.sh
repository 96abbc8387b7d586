#!/usr/bin/env bash
# `make demo`: a real OpenID provider, a demo app and sidekey-proxy in front of it, all on
# 127.0.0.1. Ctrl-C stops everything. With --smoke, a headless browser signs in once and
# the demo exits (make test runs this so the demo itself stays working).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
port="${DEMO_PORT:-4180}"
if [ "$smoke" = 1 ]; then port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); fi
proxy_bin="${CARGO_TARGET_DIR:-target}/debug/sidekey-proxy"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping"; exit 0' INT TERM

first_line() { # waits for a background process's first stdout line
  local file=$1 n=0
  until [ -s "$file" ]; do sleep 0.1; n=$((n + 1)); [ $n -lt 300 ] || { echo "demo: $file never came up" >&2; exit 1; }; done
  head -n1 "$file"
}

# The controller's offline render: what `kubectl apply` of an AuthPolicy does to an app.
controller_bin="${CARGO_TARGET_DIR:-target}/debug/sidekey-controller"
"$controller_bin" render -f manifests/examples/hello-entra.yaml >"$work/rendered.yaml"
grep -q 'restartPolicy: Always' "$work/rendered.yaml" || { echo "demo: render produced no native sidecar" >&2; exit 1; }
cp "$work/rendered.yaml" "${TMPDIR:-/tmp}/sidekey-demo-rendered.yaml"

callback="http://127.0.0.1:${port}/oauth2/callback"
node tests/idp/server.mjs "{\"clients\":[{\"client_id\":\"demo\",\"client_secret\":\"demo-secret\",\"redirect_uris\":[\"${callback}\"]}]}" >"$work/idp.out" 2>"$work/idp.err" &
pids+=($!)
issuer=$(first_line "$work/idp.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')

node tests/demo/upstream.mjs 0 >"$work/app.out" 2>&1 &
pids+=($!)
app_port=$(first_line "$work/app.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["port"])')

cookie_secret=$(head -c 32 /dev/urandom | base64 | tr -- '+/' '-_')
"$proxy_bin" \
  --provider=oidc --provider-display-name="the demo IdP" \
  --oidc-issuer-url="$issuer" --client-id=demo --client-secret=demo-secret \
  --cookie-secret="$cookie_secret" --cookie-secure=false \
  --email-domain=example.com --upstream="http://127.0.0.1:${app_port}/" \
  --http-address="127.0.0.1:${port}" --pass-access-token >"$work/proxy.log" 2>&1 &
pids+=($!)
ready() { python3 -c "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${port}/ready', timeout=1).status == 200 else 1)" 2>/dev/null; }
for _ in $(seq 1 100); do ready && break; sleep 0.1; done
ready || { echo "demo: proxy did not become ready"; cat "$work/proxy.log"; exit 1; }

if [ "$smoke" = 1 ]; then
  node tests/browser/login.mjs "http://127.0.0.1:${port}/" alice alice-password "Hello, alice" || { cat "$work/proxy.log"; exit 1; }
  echo "demo smoke test: browser signed in through sidekey-proxy; controller render ok"
  exit 0
fi

cat <<MSG

  sidekey demo is running (Ctrl-C stops it)

    Open:      http://127.0.0.1:${port}/
    Sign in:   alice / alice-password   (bob / bob-password is refused: not in example.com)

    OpenID provider:  ${issuer}   (oidc-provider, in memory)
    Demo app:         http://127.0.0.1:${app_port}/   (shows the identity headers it receives)
    Proxy log:        below

  The controller, offline: sidekey-controller render -f manifests/examples/hello-entra.yaml
$(grep '^#' "$work/rendered.yaml" | sed 's/^#/   /')
    Patched Deployment and Service: ${TMPDIR:-/tmp}/sidekey-demo-rendered.yaml

MSG
tail -f "$work/proxy.log" &
pids+=($!)
wait "${pids[0]}"
