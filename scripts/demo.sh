#!/usr/bin/env bash
# `make demo`: a real OpenID provider, a demo app and sidekey-proxy in front of it, all on
# 127.0.0.1. Ctrl-C stops everything. With --smoke, a headless browser signs in, is refused
# as the wrong user, signs out, and the demo exits (make test runs this so the demo itself
# stays working). Needs only node beyond the two built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
port="${DEMO_PORT:-4180}"
target_dir="${CARGO_TARGET_DIR:-target}"
proxy_bin="$target_dir/debug/sidekey-proxy"
controller_bin="$target_dir/debug/sidekey-controller"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping"; exit 0' INT TERM

die() { echo "demo: $*" >&2; exit 1; }
json_field() { node -e 'let d="";process.stdin.on("data",c=>d+=c).on("end",()=>console.log(JSON.parse(d)[process.argv[1]]))' "$1"; }
first_line() { # waits for a background process's first stdout line
  local file=$1 pid=$2 n=0
  until [ -s "$file" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "${file%.out}.err" "$file" 2>/dev/null >&2; die "$file: the process exited before it was listening"; }
    sleep 0.1; n=$((n + 1)); [ $n -lt 300 ] || die "$file never came up"
  done
  head -n1 "$file"
}
port_is_free() {
  node -e 'const s=require("net").createServer();s.once("error",()=>process.exit(1));s.listen(+process.argv[1],"127.0.0.1",()=>s.close(()=>process.exit(0)))' "$1"
}

for bin in "$proxy_bin" "$controller_bin"; do
  [ -x "$bin" ] || die "$bin is not built: run 'make demo' (it builds both binaries first)"
done
if [ "$smoke" = 1 ]; then
  port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
elif ! port_is_free "$port"; then
  die "port $port on 127.0.0.1 is already in use (another 'make demo'?). Stop it, or pick another port: make demo DEMO_PORT=4181"
fi

# The controller's offline render: what `kubectl apply` of an AuthPolicy does to an app.
"$controller_bin" render -f manifests/examples/hello-entra.yaml >"$work/rendered.yaml"
grep -q 'restartPolicy: Always' "$work/rendered.yaml" || die "render produced no native sidecar"
cp "$work/rendered.yaml" "${TMPDIR:-/tmp}/sidekey-demo-rendered.yaml"

# Both names of loopback: a browser opened at http://localhost:<port>/ signs in as well.
origins=("http://127.0.0.1:${port}" "http://localhost:${port}")
callbacks=$(printf '"%s/oauth2/callback",' "${origins[@]}")
signed_out=$(printf '"%s/oauth2/signed_out",' "${origins[@]}")
client="{\"client_id\":\"demo\",\"client_secret\":\"demo-secret\",\"redirect_uris\":[${callbacks%,}],\"post_logout_redirect_uris\":[${signed_out%,}]}"
node tests/idp/server.mjs "{\"clients\":[${client}]}" >"$work/idp.out" 2>"$work/idp.err" &
pids+=($!)
issuer=$(first_line "$work/idp.out" $! | json_field issuer)

node tests/demo/upstream.mjs 0 >"$work/app.out" 2>"$work/app.err" &
pids+=($!)
app_port=$(first_line "$work/app.out" $! | json_field port)

cookie_secret=$(head -c 32 /dev/urandom | base64 | tr -- '+/' '-_')
"$proxy_bin" \
  --provider=oidc --provider-display-name="the demo IdP" \
  --oidc-issuer-url="$issuer" --client-id=demo --client-secret=demo-secret \
  --cookie-secret="$cookie_secret" --cookie-secure=false \
  --email-domain=example.com --upstream="http://127.0.0.1:${app_port}/" \
  --http-address="127.0.0.1:${port}" --pass-access-token --oidc-logout >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
# Ready means *this* proxy answers: a process that died (a busy port) must not pass because
# some other server on the port said 200.
ready() { kill -0 "$proxy_pid" 2>/dev/null && node -e 'fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' "http://127.0.0.1:${port}/ready"; }
for _ in $(seq 1 100); do
  ready && break
  kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/proxy.log" >&2; die "sidekey-proxy exited (its log is above)"; }
  sleep 0.1
done
ready || { cat "$work/proxy.log" >&2; die "sidekey-proxy did not become ready"; }

if [ "$smoke" = 1 ]; then
  node tests/browser/demo.mjs "http://localhost:${port}/" "${SIDEKEY_SCREENSHOTS:-$work/screenshots}" || { cat "$work/proxy.log"; exit 1; }
  grep 'denied' "$work/proxy.log" | grep -q 'bob@other.org' || { cat "$work/proxy.log"; die "the refused account is not in the proxy's log"; }
  echo "demo smoke test: sign-in, refusal, switch account and sign-out in a browser through sidekey-proxy; controller render ok"
  exit 0
fi

cat <<MSG

  sidekey demo is running (Ctrl-C stops it)

    Open:      http://127.0.0.1:${port}/   (or http://localhost:${port}/)
    Sign in:   alice / alice-password
               bob / bob-password is refused (not in example.com): the page offers "Sign in as someone else"

    OpenID provider:  ${issuer}   (oidc-provider, in memory)
    Demo app:         http://127.0.0.1:${app_port}/   (shows the identity headers it receives)
    Proxy log:        below

  The controller, offline (the binaries are in ${target_dir}/debug; 'make install' puts them on PATH):
    sidekey-controller render -f manifests/examples/hello-entra.yaml
$(grep '^#' "$work/rendered.yaml" | sed 's/^#/   /')
    Patched Deployment and Service: ${TMPDIR:-/tmp}/sidekey-demo-rendered.yaml

MSG
tail -f "$work/proxy.log" &
pids+=($!)
# Until Ctrl-C, or until a part of the demo stops on its own.
wait -n "${pids[0]}" "${pids[1]}" "$proxy_pid" || true
kill -0 "$proxy_pid" 2>/dev/null || die "sidekey-proxy stopped (its log is above)"
die "a part of the demo stopped: $(cat "$work/idp.err" "$work/app.err" 2>/dev/null | tail -n 5)"
