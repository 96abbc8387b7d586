#!/usr/bin/env bash
# `make bench`: sidekey-proxy against nginx and the direct path, side by side in one run,
# every server on 127.0.0.1, load from wrk. Writes bench/results.json; bench/report.py
# turns it into BENCHMARKS.md. BENCH_DURATION (seconds per run, default 5) and BENCH_ROUNDS
# (default 3) bound it.
#
# For profiling: BENCH_ONLY="3 5" runs just those scenarios (and skips the footprint and
# the report); BENCH_PROXY=target/profiling/sidekey-proxy uses another build (see the
# `profiling` profile in Cargo.toml); BENCH_PERF=1 records `perf` for each sidekey run;
# BENCH_HOLD=<file> starts everything, signs in, writes the addresses and cookies to <file>
# and waits (for perf or strace by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${BENCH_DURATION:-5}"
SIDEKEY_NEEDS_WRK=1 tests/setup.sh
only="${BENCH_ONLY:-}"
if [ -n "${BENCH_PROXY:-}" ]; then
  proxy=$(realpath "$BENCH_PROXY")
else
  scripts/dist.sh >/dev/null
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  proxy="$PWD/dist/linux-$arch/sidekey-proxy"
fi

work=$(mktemp -d)
chmod 0755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in app front; do
    [ -f "$work/nginx-$n.pid" ] && kill "$(cat "$work/nginx-$n.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url: until it answers at all
  for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "bench: $1 never answered" >&2; exit 1
}
first_line() {
  for _ in $(seq 1 300); do [ -s "$1" ] && { head -n1 "$1"; return; }; sleep 0.1; done
  echo "bench: $1 stayed empty" >&2; exit 1
}

up=$(free_port) ngx=$(free_port) r202=$(free_port) areq=$(free_port)
p_cookie=$(free_port) p_redis=$(free_port) p_unauth=$(free_port) p_foot=$(free_port) redis_port=$(free_port)

# Two nginx instances, each with its own worker processes, as a user would deploy them:
# "app" is the upstream for every scenario (a body from memory, plus a 64 KiB file);
# "front" holds the front ends (proxy_pass, return 202, auth_request). With the proxy_pass
# server in the upstream's own workers, nginx would serve both hops in one process without
# a context switch, which no separate proxy in front of an app (nginx or sidekey) gets.
mkdir -p "$work/www" "$work/tmp"
python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(49152)).decode())' >"$work/www/64k"
start_nginx() { # name, http-block contents
  cat >"$work/nginx-$1.conf" <<EOF
worker_processes auto;
pid $work/nginx-$1.pid;
error_log $work/nginx-$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 10000000;
  open_file_cache max=16;
$2
}
EOF
  /usr/sbin/nginx -c "$work/nginx-$1.conf" -p "$work"
}
start_nginx app "
  # 1. the upstream itself
  server {
    listen 127.0.0.1:$up;
    location = /64k { root $work/www; }
    location / { default_type text/plain; return 200 'hello from the upstream\n'; }
  }"
start_nginx front "
  upstream app { server 127.0.0.1:$up; keepalive 512; }
  upstream sidekey { server 127.0.0.1:$p_cookie; keepalive 512; }
  # 2. nginx proxy_pass in front of it
  server {
    listen 127.0.0.1:$ngx;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ''; }
  }
  # 5. the floor for a forward-auth answer
  server { listen 127.0.0.1:$r202; location / { return 202; } }
  # 6. nginx auth_request -> sidekey /oauth2/auth -> upstream (docs/examples/nginx-auth-request.conf, trimmed)
  server {
    listen 127.0.0.1:$areq;
    location = /oauth2/auth {
      internal;
      proxy_pass http://sidekey;
      proxy_http_version 1.1;
      proxy_set_header Connection '';
      proxy_set_header Host \$host;
      proxy_set_header X-Original-URI \$request_uri;
      proxy_pass_request_body off;
      proxy_set_header Content-Length '';
    }
    location / {
      auth_request /oauth2/auth;
      auth_request_set \$user \$upstream_http_x_auth_request_user;
      auth_request_set \$email \$upstream_http_x_auth_request_email;
      proxy_set_header X-User \$user;
      proxy_set_header X-Email \$email;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection '';
    }
  }"
wait_http "http://127.0.0.1:$up/"

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)

# The identity provider, with a user whose 120 group ids make an Entra-sized session that
# splits over two cookies.
groups=$(python3 -c 'import json,uuid; print(json.dumps([str(uuid.UUID(int=i*7919+1)) for i in range(120)]))')
callbacks=$(printf '"http://127.0.0.1:%s/oauth2/callback",' "$p_cookie" "$p_redis" "$p_unauth" "$p_foot")
node tests/idp/server.mjs "{
  \"clients\": [{\"client_id\": \"bench\", \"client_secret\": \"bench-secret\", \"redirect_uris\": [${callbacks%,}]}],
  \"users\": {
    \"alice\": {\"password\": \"alice-password\", \"email\": \"alice@example.com\", \"email_verified\": true, \"groups\": [\"admins\", \"devs\"], \"preferred_username\": \"alice\", \"name\": \"Alice\"},
    \"erin\": {\"password\": \"erin-password\", \"email\": \"erin@example.com\", \"email_verified\": true, \"groups\": $groups, \"preferred_username\": \"erin\", \"name\": \"Erin Entra\"}
  }}" >"$work/idp.out" 2>"$work/idp.err" &
pids+=($!)
issuer=$(first_line "$work/idp.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')

secret=$(head -c 32 /dev/urandom | base64 | tr -- '+/' '-_')
# Request logging off on both sides (nginx: access_log off), so the comparison is of the
# proxying itself.
start_proxy() { # port, extra flags...
  local port=$1; shift
  "$proxy" --provider=oidc --oidc-issuer-url="$issuer" --client-id=bench --client-secret=bench-secret \
    --cookie-secret="$secret" --cookie-secure=false --email-domain='*' \
    --upstream="http://127.0.0.1:$up/" --http-address="127.0.0.1:$port" \
    --request-logging=false "$@" >"$work/proxy-$port.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/proxy-$port.pid"
  for _ in $(seq 1 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ] && return; sleep 0.05; done
  echo "bench: proxy on $port never became ready" >&2; cat "$work/proxy-$port.log" >&2; exit 1
}
start_proxy "$p_cookie"
start_proxy "$p_redis" --session-store-type=redis --redis-connection-url="redis://127.0.0.1:$redis_port"
start_proxy "$p_unauth" --skip-provider-button

login() { # port user password out
  SIDEKEY_COOKIE_OUT="$4" node tests/browser/login.mjs "http://127.0.0.1:$1/" "$2" "$3" "hello from the upstream" >"$work/login.json" \
    || { cat "$work/login.json" >&2; exit 1; }
}
login "$p_cookie" alice alice-password "$work/cookie-small"
login "$p_cookie" erin erin-password "$work/cookie-big"
login "$p_redis" alice alice-password "$work/cookie-redis"
grep -q '_oauth2_proxy_1=' "$work/cookie-big" || { echo "bench: the large session did not split into two cookies" >&2; exit 1; }
grep -q '_oauth2_proxy_1=' "$work/cookie-small" && { echo "bench: the small session split" >&2; exit 1; }

if [ -n "${BENCH_HOLD:-}" ]; then
  # For profiling by hand: the servers stay up, and $BENCH_HOLD (a file) says where.
  {
    echo "upstream=http://127.0.0.1:$up/"
    echo "nginx_proxy=http://127.0.0.1:$ngx/"
    echo "nginx_202=http://127.0.0.1:$r202/"
    echo "auth_request=http://127.0.0.1:$areq/"
    echo "sidekey=http://127.0.0.1:$p_cookie/"
    echo "sidekey_pid=$(cat "$work/proxy-$p_cookie.pid")"
    echo "sidekey_redis=http://127.0.0.1:$p_redis/"
    echo "sidekey_redis_pid=$(cat "$work/proxy-$p_redis.pid")"
    echo "cookie_small='$(cat "$work/cookie-small")'"
    echo "cookie_big='$(cat "$work/cookie-big")'"
    echo "cookie_redis='$(cat "$work/cookie-redis")'"
  } >"$BENCH_HOLD"
  echo "bench: holding; the servers are in $BENCH_HOLD; stop with Ctrl-C" >&2
  while :; do sleep 3600; done
fi

results="$work/results.jsonl"
# Scenarios: id, label, url, cookie file. Every one is measured in each of BENCH_ROUNDS
# rounds (default 3), a round visiting them all in turn, so that a burst of noise from
# other tenants of the machine hits one run of each and not all runs of one; the report
# takes the median round.
rounds="${BENCH_ROUNDS:-3}"
scenarios=()
scenario() { # id label url [cookie file]
  if [ -n "$only" ] && ! [[ " $only " == *" $1 "* ]]; then return; fi
  scenarios+=("$1|$2|$3|${4:-}")
}
scenario 1 "direct to the upstream" "http://127.0.0.1:$up/"
scenario 1k "direct, 64 KiB body" "http://127.0.0.1:$up/64k"
scenario 2 "nginx proxy_pass" "http://127.0.0.1:$ngx/"
scenario 2k "nginx proxy_pass, 64 KiB body" "http://127.0.0.1:$ngx/64k"
scenario 3 "sidekey-proxy, cookie session" "http://127.0.0.1:$p_cookie/" "$work/cookie-small"
scenario 3k "sidekey-proxy, cookie session, 64 KiB body" "http://127.0.0.1:$p_cookie/64k" "$work/cookie-small"
scenario 4 "sidekey-proxy, session split over two cookies" "http://127.0.0.1:$p_cookie/" "$work/cookie-big"
scenario 5 "sidekey /oauth2/auth answering 202" "http://127.0.0.1:$p_cookie/oauth2/auth" "$work/cookie-small"
scenario 5n "nginx return 202" "http://127.0.0.1:$r202/"
scenario 5p "sidekey /ping (the HTTP server alone, for reference)" "http://127.0.0.1:$p_cookie/ping"
scenario 6 "nginx auth_request -> sidekey -> upstream" "http://127.0.0.1:$areq/" "$work/cookie-small"
scenario 7 "sidekey-proxy, Redis session store" "http://127.0.0.1:$p_redis/" "$work/cookie-redis"
scenario 8 "unauthenticated (redirect to sign-in)" "http://127.0.0.1:$p_unauth/"

# thread_cpu <pid>: {"<thread name> <tid>": user+system clock ticks} for every thread
thread_cpu() {
  python3 - "$1" <<'PY'
import json, os, sys
out = {}
for tid in os.listdir(f"/proc/{sys.argv[1]}/task"):
    try:
        stat = open(f"/proc/{sys.argv[1]}/task/{tid}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    out[f"{name} {tid}"] = int(fields[11]) + int(fields[12])
print(json.dumps(out))
PY
}

# measure <round> <mode> <id|label|url|cookie file>
measure() {
  local round=$1 mode=$2 id label url cookie_file cookie="" conns=64 delay=0 perf_pid="" out
  IFS='|' read -r id label url cookie_file <<<"$3"
  [ -n "$cookie_file" ] && cookie=$(cat "$cookie_file")
  [ "$mode" = moderate ] && conns=20 delay=10
  if [ -n "${BENCH_PERF:-}" ] && [ "$mode" = saturation ] && [ "$round" = 1 ]; then
    # Two recordings of the same run: every process on the machine without stacks (who
    # gets the two CPUs: wrk, nginx, sidekey, the kernel), and sidekey's own stacks.
    perf record -a -F 499 -o "bench/perf-$id-all.data" -- sleep "$duration" 2>/dev/null &
    perf_pid=$!
    local port=${url#http://127.0.0.1:}; port=${port%%/*}
    if [ -f "$work/proxy-$port.pid" ]; then
      perf record -F 499 --call-graph dwarf,16384 -o "bench/perf-$id.data" -p "$(cat "$work/proxy-$port.pid")" -- sleep "$duration" 2>/dev/null &
      perf_pid="$perf_pid $!"
    fi
  fi
  # For a sidekey run: the CPU time of each of its threads over the run, to show how evenly
  # the kernel's SO_REUSEPORT spreads the connections over the workers.
  local port=${url#http://127.0.0.1:} proxy_pid="" before="{}" after="{}"
  port=${port%%/*}
  [ -f "$work/proxy-$port.pid" ] && proxy_pid=$(cat "$work/proxy-$port.pid")
  [ -n "$proxy_pid" ] && before=$(thread_cpu "$proxy_pid")
  out=$(BENCH_COOKIE="$cookie" BENCH_DELAY_MS=$delay wrk -t1 -c$conns -d"${duration}s" --timeout 5s -s bench/wrk.lua "$url" 2>&1 >/dev/null | tail -n1)
  [ -n "$proxy_pid" ] && after=$(thread_cpu "$proxy_pid")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); b, a = json.loads(sys.argv[8]), json.loads(sys.argv[9]); d.update(id=sys.argv[2], label=sys.argv[3], mode=sys.argv[4], round=int(sys.argv[5]), connections=int(sys.argv[6]), delay_ms=int(sys.argv[7]), thread_cpu_ticks={k: a[k] - b.get(k, 0) for k in a}); print(json.dumps(d))' \
    "$out" "$id" "$label" "$mode" "$round" "$conns" "$delay" "$before" "$after" >>"$results"
  echo "bench: round $round $id $mode $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("{:,.0f} req/s, p99 {:.2f} ms".format(d["requests"] / d["duration_us"] * 1e6, d["p99_us"] / 1000))' "$(tail -n1 "$results")")" >&2
  # shellcheck disable=SC2086
  if [ -n "$perf_pid" ]; then wait $perf_pid || true; fi
}
# Warm up every path once (connection pools, caches), then the rounds.
for s in "${scenarios[@]}"; do
  IFS='|' read -r _ _ url cookie_file <<<"$s"
  BENCH_COOKIE="$([ -n "$cookie_file" ] && cat "$cookie_file")" wrk -t1 -c64 -d2s -s bench/wrk.lua "$url" >/dev/null 2>&1
done
for round in $(seq 1 "$rounds"); do
  for s in "${scenarios[@]}"; do
    measure "$round" saturation "$s"
    measure "$round" moderate "$s"
  done
done

# Where the CPU of an authenticated request goes (scenario 3) and of a forward-auth answer
# (5): the same scenarios against the `profiling` build (the release build with symbols),
# sampled by perf with call stacks, outside the measured rounds. Flame graphs go to
# bench/flame-<id>.svg, the shares to the report.
if [ -z "$only" ] || [[ " $only " == *" profile "* ]]; then
  if perf record -o /dev/null -- true >/dev/null 2>&1; then
    cargo build --profile profiling --locked -p sidekey-proxy --bin sidekey-proxy 2>"$work/profiling-build.log" \
      || { cat "$work/profiling-build.log" >&2; exit 1; }
    tools="${CARGO_TARGET_DIR:-$PWD/target}/tools"
    if ! [ -x "$tools/bin/inferno-flamegraph" ]; then
      cargo install inferno --version 0.12.8 --locked --root "$tools" >"$work/inferno.log" 2>&1 \
        || { cat "$work/inferno.log" >&2; exit 1; }
    fi
    p_prof=$(free_port)
    measured=$proxy
    proxy="${CARGO_TARGET_DIR:-$PWD/target}/profiling/sidekey-proxy"
    start_proxy "$p_prof"
    proxy=$measured
    for id in 3 5; do
      path=/; [ "$id" = 5 ] && path=/oauth2/auth
      BENCH_COOKIE="$(cat "$work/cookie-small")" wrk -t1 -c64 -d2s -s bench/wrk.lua "http://127.0.0.1:$p_prof$path" >/dev/null 2>&1
      perf record -F 499 --call-graph dwarf,16384 -o "$work/perf-$id.data" -p "$(cat "$work/proxy-$p_prof.pid")" -- sleep "$duration" 2>/dev/null &
      perf_pid=$!
      BENCH_COOKIE="$(cat "$work/cookie-small")" wrk -t1 -c64 -d"${duration}s" -s bench/wrk.lua "http://127.0.0.1:$p_prof$path" >/dev/null 2>&1
      wait "$perf_pid" || true
      perf script -i "$work/perf-$id.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" --all >"$work/folded-$id"
      "$tools/bin/inferno-flamegraph" --minwidth 0.2 --title "sidekey-proxy, scenario $id ($path), wrk -c64" <"$work/folded-$id" >"bench/flame-$id.svg"
      python3 bench/profile.py "$id" "$work/folded-$id" >>"$results"
      echo "bench: profile of $id in bench/flame-$id.svg" >&2
    done
  else
    echo "bench: perf cannot sample on this machine: no profile" >&2
  fi
fi

# The controller at scale: 1,000 AuthPolicies x 5 Deployments through the real controller
# loop against a simulated API server (controller/examples/scale.rs).
if [ -z "$only" ] || [[ " $only " == *" scale "* ]]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$host" -p sidekey-controller --example scale 2>"$work/scale-build.log" \
    || { cat "$work/scale-build.log" >&2; exit 1; }
  echo "bench: controller scale run (${BENCH_POLICIES:-1000} policies)" >&2
  "${CARGO_TARGET_DIR:-target}/$host/release/examples/scale" "${BENCH_POLICIES:-1000}" >>"$results"
  tail -n1 "$results" >&2
fi

if [ -n "$only" ]; then
  echo "bench: BENCH_ONLY set: no footprint and no report; results in $results:" >&2
  cat "$results"
  exit 0
fi

# Footprint, on a fresh process: idle, after 100,000+ requests over 256 connections, idle again.
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
start_proxy "$p_foot"
foot_pid=$(cat "$work/proxy-$p_foot.pid")
sleep 1
idle_kib=$(rss "$foot_pid")
# At least 10 s, so that the 100,000 requests are reached on a slow machine too.
out=$(BENCH_COOKIE="$(cat "$work/cookie-small")" wrk -t1 -c256 -d"$((duration > 10 ? duration : 10))s" --timeout 5s -s bench/wrk.lua "http://127.0.0.1:$p_foot/" 2>&1 >/dev/null | tail -n1)
loaded_kib=$(hwm "$foot_pid")
sleep 5
after_kib=$(rss "$foot_pid")
start_ms=$(python3 bench/start_time.py "$proxy" "$issuer")
python3 -c 'import json,sys; print(json.dumps({"id": "footprint", "idle_kib": int(sys.argv[1]), "peak_kib": int(sys.argv[2]), "after_kib": int(sys.argv[3]), "load": json.loads(sys.argv[4]), "binary_bytes": int(sys.argv[5]), "start_to_ping_ms": json.loads(sys.argv[6])}))' \
  "$idle_kib" "$loaded_kib" "$after_kib" "$out" "$(stat -c %s "$proxy")" "$start_ms" >>"$results"

versions=$(python3 - "$proxy" <<'EOF'
import json, subprocess, sys
def first(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return (p.stdout + p.stderr).strip().splitlines()[0]
print(json.dumps({
    "sidekey-proxy": first([sys.argv[1], "--version"]),
    "nginx": first(["/usr/sbin/nginx", "-v"]),
    "wrk": first(["wrk", "-v"]),
    "redis": first(["redis-server", "--version"]),
    "node": first(["node", "--version"]),
    "rustc": first(["rustc", "--version"]),
}))
EOF
)
python3 bench/report.py "$results" "$versions" "$duration" >BENCHMARKS.md
cp "$results" bench/results.jsonl
echo "bench: wrote BENCHMARKS.md and bench/results.jsonl"
