#!/usr/bin/env python3
"""Milliseconds from exec of sidekey-proxy to its first 200 on /ping (median and max of
20 starts), polling a fresh connection every 0.5 ms. Prints JSON."""
import json
import os
import socket
import statistics
import subprocess
import sys
import time

proxy, issuer = sys.argv[1], sys.argv[2]
secret = "b" * 32


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05) as s:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(32).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


times = []
for _ in range(20):
    port = free_port()
    args = [proxy, "--provider=oidc", f"--oidc-issuer-url={issuer}", "--client-id=bench", "--client-secret=bench-secret",
            f"--cookie-secret={secret}", "--email-domain=*", "--upstream=http://127.0.0.1:9/", f"--http-address=127.0.0.1:{port}"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ping(port):
        if time.perf_counter() - t0 > 5 or p.poll() is not None:
            p.kill()
            sys.exit(f"sidekey-proxy did not answer /ping within 5 s (exit {p.poll()})")
        time.sleep(0.0005)
    times.append((time.perf_counter() - t0) * 1000)
    p.terminate()
    p.wait()
print(json.dumps({"median": round(statistics.median(times), 1), "max": round(max(times), 1), "runs": len(times)}))
