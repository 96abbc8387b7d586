#!/usr/bin/env bash
# `make dist`: fully static release binaries of sidekey-proxy and sidekey-controller in
# dist/linux-<arch>/, the files the container images copy (Dockerfile).
#
# Static glibc (static-pie, `-C target-feature=+crt-static`) rather than musl: it needs
# no second Rust target, and glibc >= 2.34 resolves names from /etc/hosts and DNS without
# loading NSS modules, which is all a container needs. The explicit --target keeps the
# flag away from build scripts and proc macros, which must stay dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  x86_64-unknown-linux-gnu) arch=amd64 ;;
  aarch64-unknown-linux-gnu) arch=arm64 ;;
  *) echo "dist: unsupported host $host (need x86_64 or aarch64 Linux with glibc)" >&2; exit 1 ;;
esac
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$host" -p sidekey-proxy -p sidekey-controller
out="dist/linux-$arch"
mkdir -p "$out"
for bin in sidekey-proxy sidekey-controller; do
  cp "${CARGO_TARGET_DIR:-target}/$host/release/$bin" "$out/$bin.tmp"
  mv "$out/$bin.tmp" "$out/$bin"
done
(cd "$out" && sha256sum sidekey-proxy sidekey-controller >SHA256SUMS)
ls -l "$out"
