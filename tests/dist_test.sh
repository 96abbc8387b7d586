#!/usr/bin/env bash
# The binaries `make dist` builds for the images must be static and run with nothing but
# themselves: each is checked for a dynamic loader or shared libraries, then started as
# uid 65532 in an empty root filesystem (what distroless/static gives them), where the
# proxy resolves its upstream's name from /etc/hosts and serves a request through it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
dist="dist/linux-$arch"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
fail() { echo "dist test: $*" >&2; exit 1; }

(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match the binaries"
for bin in sidekey-proxy sidekey-controller; do
  f="$dist/$bin"
  ! readelf -lW "$f" | grep -q 'INTERP' || fail "$bin asks for a dynamic loader"
  ! readelf -d "$f" | grep -q '(NEEDED)' || fail "$bin needs shared libraries: $(readelf -d "$f" | grep NEEDED)"
done
# The Dockerfile copies exactly these files, and runs them as the chart's and the
# sidecar's non-root user.
for src in $(sed -n 's/^COPY .* \(dist\/[^ ]*\) .*/\1/p' Dockerfile); do
  [ -f "${src//\$\{TARGETARCH\}/$arch}" ] || fail "the Dockerfile copies $src, which make dist did not build"
done
[ "$(grep -c '^USER ' Dockerfile)" = 1 ] && grep -q '^USER 65532:65532$' Dockerfile || fail "the images must run as 65532"
[ "$(grep -c '^FROM common AS ' Dockerfile)" = 2 ] || fail "both images must build on the common stage (its USER and labels)"
# The proxy image (distroless/static, about 2 MiB) must stay under 20 MB.
proxy_bytes=$(stat -c %s "$dist/sidekey-proxy")
[ "$proxy_bytes" -le $((17 * 1024 * 1024)) ] || fail "sidekey-proxy is $proxy_bytes bytes; the image budget leaves 17 MiB for it"

root=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$root"; }
trap cleanup EXIT
chmod 0755 "$root"
mkdir -p "$root/bin" "$root/etc" "$root/examples" "$root/www"
cp "$dist/sidekey-proxy" "$dist/sidekey-controller" "$root/bin/"
cp manifests/examples/hello-entra.yaml "$root/examples/"
printf '127.0.0.1 localhost app.sidekey.test\n' >"$root/etc/hosts"
in_root() {
  if [ "$(id -u)" = 0 ]; then chroot --userspec=65532:65532 "$root" "$@"; else unshare --map-root-user chroot "$root" "$@"; fi
}
# In the background: exec, so that $! is the server itself (chroot and unshare exec in turn)
# and the trap's kill reaches it, not a subshell that would leave it running.
in_root_exec() {
  if [ "$(id -u)" = 0 ]; then exec chroot --userspec=65532:65532 "$root" "$@"; else exec unshare --map-root-user chroot "$root" "$@"; fi
}

in_root /bin/sidekey-proxy --version | grep -q "$version" || fail "sidekey-proxy --version in an empty root"
in_root /bin/sidekey-controller --version | grep -q "$version" || fail "sidekey-controller --version in an empty root"
in_root /bin/sidekey-controller render -f /examples/hello-entra.yaml | grep -q 'restartPolicy: Always' \
  || fail "sidekey-controller render in an empty root"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app_port=$(free_port) proxy_port=$(free_port)
echo "served by the app" >"$root/www/hello.txt"
python3 -m http.server "$app_port" --bind 127.0.0.1 --directory "$root/www" >/dev/null 2>&1 &
pids+=($!)
# No IdP: the proxy starts anyway (not ready), and skip-auth routes still work.
in_root_exec /bin/sidekey-proxy --http-address="127.0.0.1:$proxy_port" \
  --upstream="http://app.sidekey.test:$app_port/" --skip-auth-route='^/hello\.txt$' \
  --provider=oidc --oidc-issuer-url=http://127.0.0.1:9/ --client-id=dist --client-secret=dist \
  --cookie-secret="$(head -c 32 /dev/urandom | base64 | tr -- '+/' '-_')" --email-domain='*' >"$root/proxy.log" 2>&1 &
pids+=($!)
got=""
for _ in $(seq 1 100); do
  got=$(curl -fsS "http://127.0.0.1:$proxy_port/hello.txt" 2>/dev/null) && break
  sleep 0.1
done
[ "$got" = "served by the app" ] || { cat "$root/proxy.log" >&2; fail "the static proxy did not serve through app.sidekey.test (got '$got')"; }
cleanup
trap - EXIT
for p in "${pids[@]}"; do
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$p" 2>/dev/null || fail "process $p outlived the test"
done
echo "ok: $dist/sidekey-proxy ($((proxy_bytes / 1024)) KiB) and sidekey-controller are static and run as 65532 in an empty root; the proxy resolved its upstream from /etc/hosts"
