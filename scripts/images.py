#!/usr/bin/env python3
"""`make images` without a container engine: the Dockerfile's targets as OCI image archives.

    scripts/images.py [--registry R] [--tag T] [--out DIR] [--build-arg K=V] [TARGET...]

For each target stage of the Dockerfile (default: every stage named sidekey-*), this reads
the stage and the stages it builds on (FROM, ARG, LABEL, USER, COPY, EXPOSE, ENTRYPOINT) and
writes DIR/<target>.oci.tar (default dist/images/), named R/<target>:T (default
ghcr.io/sidekey-dev and v<version>). The Dockerfile stays the source of truth: an
instruction or flag this builder does not know is an error, not something skipped.

No base image can be pulled here, so the Dockerfile's base (gcr.io/distroless/static, or
scratch) is built from scratch as the layer distroless/static:nonroot gives: /etc/passwd and
/etc/group with root, nobody and nonroot (65532), /etc/nsswitch.conf, the CA certificates
(from this machine's /etc/ssl/certs/ca-certificates.crt), /tmp (1777) and /home/nonroot.
No shell, no package manager, no tzdata (neither binary reads zoneinfo).

Reproducible: files are sorted, owned by 0:0 (the home by 65532), and every timestamp
(file mtimes, the gzip header, the config's `created`) is SOURCE_DATE_EPOCH, default the
commit time of HEAD. The same inputs give the same bytes, hence the same image digest.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/) whose index
names the image (`io.containerd.image.name`, `org.opencontainers.image.ref.name`), plus
Docker's manifest.json: `ctr images import`, `kind load image-archive`, `docker load` and
`podman load` all take it.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# What distroless/static:nonroot's config carries besides what the Dockerfile sets.
BASE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]
DISTROLESS_STATIC = re.compile(r"^gcr\.io/distroless/static(-debian\d+)?(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$")

PASSWD = """root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = """root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
"""
NSSWITCH = "hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\nshadow: files\n"


class DockerfileError(Exception):
    pass


def fail(msg):
    print(f"images: {msg}", file=sys.stderr)
    sys.exit(1)


def instructions(text):
    """(line number, KEYWORD, rest) for each instruction, continuations joined."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise DockerfileError("the Dockerfile ends inside a continued line")
    return out


def substitute(s, args, where):
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in args:
            raise DockerfileError(f"{where}: ${{{name}}} is not a declared ARG")
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, s)


class Stage:
    def __init__(self, name, base):
        self.name, self.base = name, base
        self.steps = []  # (line, KEYWORD, rest) in order


def parse(text):
    """(global ARG defaults, stages by name in order)."""
    global_args, stages, current = {}, {}, None
    for line, word, rest in instructions(text):
        where = f"Dockerfile:{line}"
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            if not m or rest.startswith("--"):
                raise DockerfileError(f"{where}: FROM {rest}: only `FROM image [AS name]` is supported")
            current = Stage(m.group(2) or f"stage{len(stages)}", m.group(1))
            stages[current.name] = current
        elif word == "ARG" and current is None:
            name, _, default = rest.partition("=")
            global_args[name] = default
        elif current is None:
            raise DockerfileError(f"{where}: {word} before the first FROM")
        elif word in ("ARG", "LABEL", "USER", "COPY", "EXPOSE", "ENTRYPOINT"):
            current.steps.append((where, word, rest))
        else:
            raise DockerfileError(f"{where}: {word} is not supported by scripts/images.py (only ARG, LABEL, USER, COPY, EXPOSE, ENTRYPOINT)")
    return global_args, stages


class Image:
    """What a target stage amounts to: files to add (in layers) and the image config."""

    def __init__(self):
        self.layers = []  # list of layers; a layer is a list of (path, mode, uid, gid, bytes|None for a dir)
        self.labels, self.user, self.entrypoint, self.exposed = {}, None, None, {}


def resolve(target, global_args, stages, build_args, seen=()):
    if target not in stages:
        raise DockerfileError(f"no stage named {target} in the Dockerfile (stages: {', '.join(stages)})")
    if target in seen:
        raise DockerfileError(f"stage {target} builds on itself")
    stage = stages[target]
    base = substitute(stage.base, {**global_args, **{k: v for k, v in build_args.items() if k in global_args}}, f"FROM {stage.base}")
    if base in stages:
        img = resolve(base, global_args, stages, build_args, seen + (target,))
    elif base == "scratch" or DISTROLESS_STATIC.match(base):
        img = Image()
        img.layers.append(base_layer())
        img.user = "65532" if base != "scratch" else None
    else:
        raise DockerfileError(f"FROM {base}: scripts/images.py builds only on distroless/static (rebuilt from scratch) or scratch")
    args = {"TARGETARCH": build_args["TARGETARCH"], "TARGETOS": "linux"}
    for where, word, rest in stage.steps:
        if word == "ARG":
            name, eq, default = rest.partition("=")
            args[name] = build_args.get(name, default if eq else args.get(name, ""))
        elif word == "LABEL":
            for pair in shlex.split(substitute(rest, args, where)):
                k, eq, v = pair.partition("=")
                if not eq:
                    raise DockerfileError(f"{where}: LABEL {pair}: expected key=value")
                img.labels[k] = v
        elif word == "USER":
            img.user = substitute(rest, args, where)
        elif word == "EXPOSE":
            for p in substitute(rest, args, where).split():
                img.exposed[p if "/" in p else f"{p}/tcp"] = {}
        elif word == "ENTRYPOINT":
            try:
                img.entrypoint = json.loads(rest)
            except json.JSONDecodeError:
                raise DockerfileError(f"{where}: ENTRYPOINT must be the exec (JSON) form: a shell form needs a shell, which the image has none of")
        elif word == "COPY":
            img.layers.append(copy_layer(substitute(rest, args, where), where))
    return img


def copy_layer(rest, where):
    words = rest.split()
    mode = None
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if flag.startswith("--chmod="):
            mode = int(flag.split("=", 1)[1], 8)
        else:
            raise DockerfileError(f"{where}: COPY {flag} is not supported by scripts/images.py")
    if len(words) != 2:
        raise DockerfileError(f"{where}: COPY with one source file and one destination path only")
    src, dst = words
    path = os.path.join(ROOT, src)
    if not os.path.isfile(path):
        raise DockerfileError(f"{where}: COPY {src}: no such file (run `make dist` first)")
    if dst.endswith("/"):
        dst += os.path.basename(src)
    with open(path, "rb") as f:
        data = f.read()
    if mode is None:
        mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
    return with_parents([(dst.lstrip("/"), mode, 0, 0, data)])


def base_layer():
    with open(CA_BUNDLE, "rb") as f:
        ca = f.read()
    files = [
        ("etc/passwd", 0o644, 0, 0, PASSWD.encode()),
        ("etc/group", 0o644, 0, 0, GROUP.encode()),
        ("etc/nsswitch.conf", 0o644, 0, 0, NSSWITCH.encode()),
        ("etc/ssl/certs/ca-certificates.crt", 0o644, 0, 0, ca),
        ("tmp", 0o1777, 0, 0, None),
        ("home/nonroot", 0o700, 65532, 65532, None),
        ("root", 0o700, 0, 0, None),
    ]
    return with_parents(files)


def with_parents(entries):
    have = {e[0] for e in entries}
    out = list(entries)
    for e in entries:
        parts = e[0].split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in have:
                have.add(d)
                out.append((d, 0o755, 0, 0, None))
    return sorted(out, key=lambda e: e[0])


def layer_tar(entries, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, uid, gid, data in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def archive(img, ref, tag, arch, epoch):
    """The OCI archive (bytes) and the manifest digest."""
    blobs = {}

    def blob(data):
        d = sha256(data)
        blobs[d] = data
        return d

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    layer_descs, diff_ids = [], []
    for entries in img.layers:
        raw = layer_tar(entries, epoch)
        gz = gzip.compress(raw, compresslevel=9, mtime=0)
        diff_ids.append(sha256(raw))
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)})
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": img.user or "",
            "Env": BASE_ENV,
            "Entrypoint": img.entrypoint,
            "WorkingDir": "/",
            "Labels": dict(sorted(img.labels.items())),
            "ExposedPorts": dict(sorted(img.exposed.items())),
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "scripts/images.py (distroless/static:nonroot equivalent)"}]
        + [{"created": created, "created_by": "scripts/images.py: COPY from the Dockerfile"} for _ in img.layers[1:]],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = blob(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
        "annotations": {"org.opencontainers.image.created": created},
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = blob(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    docker_manifest = [{"Config": f"blobs/sha256/{config_digest[7:]}", "RepoTags": [ref], "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in layer_descs]}]
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode()),
        ("manifest.json", json.dumps(docker_manifest, separators=(",", ":")).encode()),
    ] + [(f"blobs/sha256/{d[7:]}", b) for d, b in sorted(blobs.items())]
    entries = with_parents([(p, 0o644, 0, 0, b) for p, b in files])
    return layer_tar(entries, epoch), manifest_digest


def default_epoch():
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        return int(subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        m = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', f.read(), re.M | re.S)
    return m.group(1) if m else "dev"


def main():
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    version = workspace_version()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="Dockerfile stages (default: every sidekey-* stage)")
    ap.add_argument("--registry", default=os.environ.get("REGISTRY") or "ghcr.io/sidekey-dev")
    ap.add_argument("--tag", default=f"v{version}")
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", "images"))
    ap.add_argument("--arch", default=arch)
    ap.add_argument("--dockerfile", default=os.path.join(ROOT, "Dockerfile"))
    ap.add_argument("--build-arg", action="append", default=[], help="NAME=VALUE, as docker build takes it")
    a = ap.parse_args()
    build_args = {"VERSION": version, "REVISION": git_revision(), "TARGETARCH": a.arch}
    for kv in a.build_arg:
        k, _, v = kv.partition("=")
        build_args[k] = v
    try:
        with open(a.dockerfile) as f:
            global_args, stages = parse(f.read())
        targets = a.targets or [s for s in stages if s.startswith("sidekey-")]
        os.makedirs(a.out, exist_ok=True)
        epoch = default_epoch()
        for target in targets:
            img = resolve(target, global_args, stages, build_args)
            ref = f"{a.registry}/{target}:{a.tag}"
            data, digest = archive(img, ref, a.tag, a.arch, epoch)
            path = os.path.join(a.out, f"{target}.oci.tar")
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
            print(f"{ref} {digest} {os.path.relpath(path)} ({len(data) / 1e6:.1f} MB)")
    except DockerfileError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
