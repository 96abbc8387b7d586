#!/usr/bin/env bash
# `make demo` on a port that something else holds must stop with a message that says so,
# not print "running" while its own proxy died (the ready probe would reach the other server).
set -euo pipefail
cd "$(dirname "$0")/../.."
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
# An HTTP server that answers /ready with 200, like a first demo still running.
node -e 'require("http").createServer((q,r)=>r.end("OK")).listen(+process.argv[1],"127.0.0.1")' "$port" &
holder=$!
trap 'kill $holder 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do node -e 'fetch(process.argv[1]).then(()=>process.exit(0),()=>process.exit(1))' "http://127.0.0.1:$port/" && break; sleep 0.1; done
set +e
out=$(DEMO_PORT=$port timeout 60 scripts/demo.sh 2>&1)
rc=$?
set -e
if [ "$rc" = 0 ] || ! grep -q "port $port on 127.0.0.1 is already in use" <<<"$out"; then
  echo "busy_port_test: expected a clear failure, got rc=$rc:" >&2
  echo "$out" >&2
  exit 1
fi
echo "busy_port_test: a busy port stops the demo with: $out"
