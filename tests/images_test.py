#!/usr/bin/env python3
"""The images `make images` builds (scripts/images.py), checked as a registry or a node would
see them: the OCI layout and the name in its index, the config (user 65532, the entrypoint,
every OCI label of the Dockerfile, the exposed port), the root filesystem (the binary of
`make dist`, byte for byte and mode 0555; the distroless/static:nonroot files; no shell and
nothing else executable), reproducibility (a second build is the same bytes), and that the
image's own root filesystem runs the binary as 65532. Also: an instruction the builder does
not know is an error, not something skipped.

Needs `make dist` first (`make test` runs it before this).
"""

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
DIST = os.path.join(ROOT, "dist", f"linux-{ARCH}")
LABELS = ["source", "url", "documentation", "licenses", "version", "revision", "title", "description"]
IMAGES = {"sidekey-proxy": "4180/tcp", "sidekey-controller": "8080/tcp"}


def fail(msg):
    print(f"images test: {msg}", file=sys.stderr)
    sys.exit(1)


def build(out, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "images.py"), "--out", out, "--registry", "registry.test/sk", "--tag", "t1", *extra],
        capture_output=True,
        text=True,
    )


def read_archive(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def blob(files, digest):
    data = files[f"blobs/sha256/{digest.split(':', 1)[1]}"]
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        fail(f"blob {digest} does not match its digest")
    return data


def main():
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M | re.S).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        for out in (first, second):
            r = build(out)
            if r.returncode != 0:
                fail(f"scripts/images.py failed: {r.stderr}")
        for name, port in IMAGES.items():
            path = os.path.join(first, f"{name}.oci.tar")
            with open(path, "rb") as f, open(os.path.join(second, f"{name}.oci.tar"), "rb") as g:
                if f.read() != g.read():
                    fail(f"{name}: two builds of the same inputs differ (not reproducible)")
            files = read_archive(path)
            if json.loads(files["oci-layout"]) != {"imageLayoutVersion": "1.0.0"}:
                fail(f"{name}: oci-layout")
            index = json.loads(files["index.json"])
            [desc] = index["manifests"]
            ref = f"registry.test/sk/{name}:t1"
            if desc["annotations"] != {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "t1"}:
                fail(f"{name}: the index does not name the image: {desc}")
            docker = json.loads(files["manifest.json"])
            if docker[0]["RepoTags"] != [ref]:
                fail(f"{name}: manifest.json (docker load) names {docker[0]['RepoTags']}")
            manifest = json.loads(blob(files, desc["digest"]))
            config = json.loads(blob(files, manifest["config"]["digest"]))
            c = config["config"]
            if c["User"] != "65532:65532":
                fail(f"{name}: user {c['User']!r}, not 65532:65532")
            if c["Entrypoint"] != [f"/usr/local/bin/{name}"]:
                fail(f"{name}: entrypoint {c['Entrypoint']}")
            if c.get("Cmd") or c.get("Shell"):
                fail(f"{name}: a Cmd or Shell in the config: {c}")
            if list(c["ExposedPorts"]) != [port]:
                fail(f"{name}: exposed ports {c['ExposedPorts']}")
            labels = c["Labels"]
            want = {f"org.opencontainers.image.{k}" for k in LABELS}
            if set(labels) != want:
                fail(f"{name}: labels {sorted(labels)}, want {sorted(want)}")
            if labels["org.opencontainers.image.title"] != name or labels["org.opencontainers.image.version"] != version:
                fail(f"{name}: title/version labels {labels}")
            rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
            if rev and labels["org.opencontainers.image.revision"] != rev:
                fail(f"{name}: revision label {labels['org.opencontainers.image.revision']}, HEAD is {rev}")
            if config["architecture"] != ARCH or config["os"] != "linux":
                fail(f"{name}: platform {config['os']}/{config['architecture']}")

            # The root filesystem, layer by layer.
            rootfs = os.path.join(tmp, f"root-{name}")
            os.makedirs(rootfs)
            entries = {}
            for i, layer in enumerate(manifest["layers"]):
                raw = gzip.decompress(blob(files, layer["digest"]))
                if "sha256:" + hashlib.sha256(raw).hexdigest() != config["rootfs"]["diff_ids"][i]:
                    fail(f"{name}: layer {i} does not match its diff_id")
                with tarfile.open(fileobj=io.BytesIO(raw)) as t:
                    for m in t.getmembers():
                        entries[m.name] = m
                    t.extractall(rootfs, filter="fully_trusted")
            binary = f"usr/local/bin/{name}"
            with open(os.path.join(DIST, name), "rb") as f:
                dist_sum = hashlib.sha256(f.read()).hexdigest()
            with open(os.path.join(rootfs, binary), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != dist_sum:
                    fail(f"{name}: /{binary} is not dist/linux-{ARCH}/{name}")
            if entries[binary].mode != 0o555 or (entries[binary].uid, entries[binary].gid) != (0, 0):
                fail(f"{name}: /{binary} mode {oct(entries[binary].mode)} owner {entries[binary].uid}")
            executables = sorted(n for n, m in entries.items() if m.isfile() and m.mode & 0o111)
            if executables != [binary]:
                fail(f"{name}: executables besides the binary (a shell?): {executables}")
            for shell in ("bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"):
                if shell in entries:
                    fail(f"{name}: /{shell} in the image")
            passwd = open(os.path.join(rootfs, "etc/passwd")).read()
            if "nonroot:x:65532:65532:" not in passwd or "nonroot:x:65532:" not in open(os.path.join(rootfs, "etc/group")).read():
                fail(f"{name}: no nonroot 65532 in /etc/passwd and /etc/group")
            if entries["tmp"].mode != 0o1777 or entries["home/nonroot"].uid != 65532:
                fail(f"{name}: /tmp or /home/nonroot as distroless has them")
            if os.path.getsize(os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt")) < 10_000:
                fail(f"{name}: no CA certificates")
            if len({m.mtime for m in entries.values()}) != 1:
                fail(f"{name}: file times differ (not reproducible)")
            # The image's own root filesystem runs the binary as 65532.
            if os.getuid() == 0:
                r = subprocess.run(["chroot", "--userspec=65532:65532", rootfs, f"/{binary}", "--version"], capture_output=True, text=True)
                if r.returncode != 0 or version not in r.stdout:
                    fail(f"{name}: --version in the image's root as 65532: {r.returncode} {r.stdout} {r.stderr}")
            size = os.path.getsize(path)
            if name == "sidekey-proxy" and size > 20_000_000:
                fail(f"{name}: {size} bytes, over the 20 MB budget")
            print(f"ok: {ref} {desc['digest'][:19]} {size / 1e6:.1f} MB: user 65532, entrypoint, {len(labels)} labels, no shell, reproducible")

        # The Dockerfile stays the source of truth: what the builder cannot do is an error.
        bad = os.path.join(tmp, "Dockerfile.bad")
        with open(bad, "w") as f:
            f.write("FROM gcr.io/distroless/static-debian12:nonroot AS sidekey-proxy\nRUN echo hi\n")
        r = build(os.path.join(tmp, "c"), "--dockerfile", bad)
        if r.returncode == 0 or "RUN is not supported" not in r.stderr:
            fail(f"a RUN instruction was not refused: {r.returncode} {r.stderr}")
        with open(bad, "w") as f:
            f.write("FROM debian:12 AS sidekey-proxy\n")
        r = build(os.path.join(tmp, "c"), "--dockerfile", bad)
        if r.returncode == 0 or "builds only on distroless/static" not in r.stderr:
            fail(f"a base other than distroless/static was not refused: {r.returncode} {r.stderr}")
    print("ok: the builder refuses what it cannot build as the Dockerfile says")


if __name__ == "__main__":
    main()
