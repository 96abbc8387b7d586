#!/usr/bin/env python3
"""Where one scenario's CPU goes: reads `perf script` output folded by inferno-collapse-perf
(`--all`, kernel frames marked `_[k]`) and prints one JSON line with each part's share of
the proxy's samples, the largest first.

usage: profile.py <id> <folded file>
"""
import json
import re
import sys

# (part, pattern over any frame of a sample's stack); the first match wins, so the more
# specific parts come first. Kernel samples are split by the system call they are in.
PARTS = [
    ("kernel: send (writev), loopback delivery included", r"writev|sendmsg|sendto", True),
    ("kernel: receive (recvfrom, read)", r"recvfrom|sys_read|recvmsg", True),
    ("kernel: epoll, scheduling, interrupts", r".", True),
    ("session: cookie parse, cache lookup, open", r"sessions::<.*>::session|load_session|Sessions::|RequestCookies|opened::", False),
    ("proxy cookies stripped from the upstream request", r"strip_own_cookies|strip_proxy_cookies", False),
    ("upstream connection: request write, response read (hyper client)", r"client::conn::http1|dispatch::Client<", False),
    ("upstream checkout and send (pool)", r"upstream::pool::|legacy::client|Client<.*>::send_request", False),
    ("identity and forwarding headers", r"set_upstream_headers|set_response_headers|remove_hop_by_hop|append_forwarded|strip_identity|remove_connection_nominated|remove_all_spellings|Origin::read", False),
    ("request log span and metrics", r"tracing_subscriber|tracing_core|tracing::span|sidekey_proxy::metrics::|prometheus_client", False),
    ("path normalization and routing", r"routes::parse|set_path|App::endpoint|for_path", False),
    ("rest of the request handler", r"sidekey_proxy::app::", False),
    ("client connection: request parse, response write (hyper server)", r"dispatch::Server<|proto::h1::|server::conn", False),
    ("tokio scheduler and timers", r"tokio::runtime", False),
]


def main():
    ident, path = sys.argv[1], sys.argv[2]
    counts = {name: 0 for name, _, _ in PARTS}
    counts["other"] = 0
    total = 0
    for line in open(path):
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        frames = stack.split(";")
        kernel = frames[-1].endswith("_[k]")
        for name, pattern, in_kernel in PARTS:
            if in_kernel == kernel and any(re.search(pattern, f) for f in frames):
                counts[name] += n
                break
        else:
            counts["other"] += n
    shares = sorted(((name, n / total) for name, n in counts.items() if n), key=lambda p: -p[1])
    print(json.dumps({"id": f"profile-{ident}", "samples": total, "shares": shares}))


main()
