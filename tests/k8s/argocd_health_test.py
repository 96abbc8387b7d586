#!/usr/bin/env python3
"""Runs the Argo CD health check for AuthPolicy against its health_test.yaml cases with a
real Lua interpreter (Debian's lua5.4; Argo CD runs the same script in gopher-lua, Lua 5.1,
so the script sticks to the common subset), the way Argo CD's own resource-customization
tests do: `obj` is the resource, the script returns {status, message}.

Also checks that the argocd-cm snippet in manifests/argocd carries the same script
(--update rewrites it).
"""
import os
import subprocess
import sys
import tempfile

import yaml

import chart_test  # sibling: the shared schema checks

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHECK = os.path.join(ROOT, "manifests", "argocd", "resource_customizations", "sidekey.dev", "AuthPolicy")
CM = os.path.join(ROOT, "manifests", "argocd", "argocd-cm-health.yaml")
CM_KEY = "resource.customizations.health.sidekey.dev_AuthPolicy"
LUA = "lua5.4"


def lua(value):
    """A Python value from YAML as a Lua table constructor."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\{ord(c):03d}" for c in value) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(str(k))}] = {lua(v)}" for k, v in value.items() if v is not None) + "}"
    # Timestamps and dates: Argo hands the script the JSON string.
    return lua(str(value))


def run_case(obj):
    script = (
        f"obj = {lua(obj)}\n"
        f"local check = assert(loadfile({lua(os.path.join(CHECK, 'health.lua'))}))\n"
        "local hs = check()\n"
        'io.write(tostring(hs.status), "\\n", tostring(hs.message), "\\n")\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        p = subprocess.run([LUA, f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        return None, p.stderr.strip()
    status, message = p.stdout.split("\n")[:2]
    return status, message


def cm_text(script):
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
        },
        "data": {CM_KEY: script},
    }

    class Literal(str):
        pass

    yaml.add_representer(Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"), Dumper=yaml.SafeDumper)
    cm["data"][CM_KEY] = Literal(script)
    return (
        "# Merge into Argo CD's argocd-cm (generated from resource_customizations/sidekey.dev/AuthPolicy/health.lua):\n"
        "#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-health.yaml\n"
        + yaml.safe_dump(cm, sort_keys=False, width=1000)
    )


def validate_manifests():
    """The Applications against Argo CD's schema, the ConfigMap against Kubernetes'."""
    docs = []
    for name in sorted(os.listdir(os.path.dirname(CM))):
        if name.endswith(".yaml"):
            with open(os.path.join(os.path.dirname(CM), name)) as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    apps = [d for d in docs if d["kind"] == "Application"]
    chart_test.validate_schemas(docs, "manifests/argocd")
    return chart_test.failures + ([] if len(apps) >= 2 else [f"manifests/argocd: want 2 Applications, found {len(apps)}"])


def main(argv):
    failures = []
    with open(os.path.join(CHECK, "health_test.yaml")) as f:
        tests = yaml.safe_load(f)["tests"]
    for t in tests:
        with open(os.path.join(CHECK, t["inputPath"])) as f:
            obj = yaml.safe_load(f)
        want = t["healthStatus"]
        status, message = run_case(obj)
        if (status, message) != (want["status"], want.get("message", "")):
            failures.append(f"{t['inputPath']}: want {want['status']} {want.get('message')!r}, got {status} {message!r}")
    with open(os.path.join(CHECK, "health.lua")) as f:
        text = cm_text(f.read())
    if "--update" in argv:
        with open(CM, "w") as f:
            f.write(text)
    if not os.path.exists(CM) or open(CM).read() != text:
        failures.append("manifests/argocd/argocd-cm-health.yaml is stale: run `make manifests`")
    failures += validate_manifests()
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    if not failures:
        print(f"ok: Argo CD health check: {len(tests)} cases pass in {LUA}; Applications and argocd-cm valid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
