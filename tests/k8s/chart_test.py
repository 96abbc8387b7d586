#!/usr/bin/env python3
"""The Helm chart and the kustomize install, checked with the real helm and kubectl.

- `helm lint --strict` with the defaults and with every charts/sidekey/ci/*-values.yaml;
- `helm template` for each of those scenarios: every object validated against the
  official Kubernetes schemas (strict) for the oldest and newest supported version, the
  ServiceMonitor against the Prometheus Operator's schema, and what each scenario promises
  asserted (replicas, Lease RBAC, PDB, images, ...);
- values.schema.json and the templates' `fail`s reject bad values with a clear message;
- the chart's CRD is crds/ unchanged, and Chart.yaml carries the Cargo version;
- manifests/install is the default render (regenerated with --update) and
  `kubectl kustomize manifests/install` builds exactly it.

usage: chart_test.py [--update]
"""
import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "charts", "sidekey")
HELM = os.path.join(ROOT, ".tools", "bin", "helm")
KUBECTL = os.path.join(ROOT, ".tools", "bin", "kubectl")
INSTALL = os.path.join(ROOT, "manifests", "install")
NAMESPACE = "sidekey-system"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.25.0", "1.37.0"]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kw)


def template(*args, release="sidekey"):
    p = run([HELM, "template", release, CHART, "--namespace", NAMESPACE, *args])
    return p, [d for d in yaml.safe_load_all(p.stdout) if d] if p.returncode == 0 else []


def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return hits[0] if hits else None


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'\[workspace\.package\]\s*\nversion = "([^"]+)"', f.read()).group(1)


# Custom resources of other projects, checked by validate_models.mjs instead.
FOREIGN_GROUPS = ("monitoring.coreos.com/", "argoproj.io/")


def validate_schemas(objs, scenario):
    """Built-in kinds against the official schemas for each supported version; ServiceMonitors
    and Argo CD Applications against their projects' published schemas."""
    for version in K8S_VERSIONS:
        for o in objs:
            if o["apiVersion"].startswith(FOREIGN_GROUPS):
                continue
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except Exception as e:  # the library raises several error types
                failures.append(f"{scenario}: {o['kind']}/{o['metadata']['name']} invalid for Kubernetes {version}: {e}")
    foreign = [o for o in objs if o["apiVersion"].startswith(FOREIGN_GROUPS)]
    if foreign:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(foreign, f)
        p = run(["node", os.path.join(ROOT, "tests", "k8s", "validate_models.mjs"), f.name])
        os.unlink(f.name)
        check(p.returncode == 0, f"{scenario}: {p.stdout}{p.stderr}")


def controller(objs):
    d = find(objs, "Deployment", "sidekey-controller")
    return d, d["spec"]["template"]["spec"]["containers"][0]


def expect_defaults(objs, s):
    d, c = controller(objs)
    v = cargo_version()
    check(d["spec"]["replicas"] == 2, f"{s}: 2 replicas by default")
    check(c["image"] == f"ghcr.io/sidekey-dev/sidekey-controller:v{v}", f"{s}: controller image tag is v+appVersion, got {c['image']}")
    check(f"--proxy-image=ghcr.io/sidekey-dev/sidekey-proxy:v{v}" in c["args"], f"{s}: proxy image follows appVersion: {c['args']}")
    check("--leader-election=true" in c["args"], f"{s}: leader election on")
    env = {e["name"]: e for e in c["env"]}
    check(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", f"{s}: Lease namespace from the pod")
    check(find(objs, "PodDisruptionBudget") is not None, f"{s}: a PDB with 2 replicas")
    role = find(objs, "Role", "sidekey-leader-election")
    check(role is not None and role["rules"][0]["resources"] == ["leases"], f"{s}: Lease Role")
    spread = d["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
    check({t["topologyKey"] for t in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, f"{s}: spread over nodes and zones")
    pod = d["spec"]["template"]["spec"]
    sc, psc = c["securityContext"], pod["securityContext"]
    check(
        psc["runAsNonRoot"] and psc["seccompProfile"]["type"] == "RuntimeDefault"
        and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"],
        f"{s}: restricted security context",
    )
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{s}: probes")
    check("limits" in c["resources"] and "requests" in c["resources"], f"{s}: resources")
    crd = find(objs, "CustomResourceDefinition")
    check(crd is not None and crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", f"{s}: CRD kept on uninstall")
    check(find(objs, "ServiceMonitor") is None, f"{s}: no ServiceMonitor by default")
    check(find(objs, "Service", "sidekey-metrics") is not None, f"{s}: metrics Service")
    agg = find(objs, "ClusterRole", "sidekey-edit")
    check(agg is not None and agg["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-edit") == "true", f"{s}: edit aggregation")


def expect_single_replica(objs, s):
    d, c = controller(objs)
    check(d["spec"]["replicas"] == 1, f"{s}: 1 replica")
    check("--leader-election=false" in c["args"], f"{s}: leader election off")
    check(find(objs, "PodDisruptionBudget") is None, f"{s}: no PDB for one replica")
    check(find(objs, "Role") is None and find(objs, "RoleBinding") is None, f"{s}: no Lease RBAC without leader election")


def expect_servicemonitor(objs, s):
    sm = find(objs, "ServiceMonitor")
    if check(sm is not None, f"{s}: ServiceMonitor rendered"):
        check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", f"{s}: ServiceMonitor labels")
        check(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["interval"] == "15s", f"{s}: endpoint")
        svc = find(objs, "Service", "sidekey-metrics")
        check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), f"{s}: selects the metrics Service")


def expect_custom_image(objs, s):
    d, c = controller(objs)
    pod = d["spec"]["template"]["spec"]
    check(
        c["image"] == "registry.example.com/platform/sidekey-controller:v0.1.0-patched@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        f"{s}: controller image with digest, got {c['image']}",
    )
    check(
        f"--proxy-image=registry.example.com/platform/sidekey-proxy:v{cargo_version()}@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210" in c["args"],
        f"{s}: proxy image with digest: {c['args']}",
    )
    check("--sidecar-mode=regular" in c["args"], f"{s}: sidecar mode")
    check(pod["imagePullSecrets"] == [{"name": "registry-credentials"}] and c["imagePullPolicy"] == "Always", f"{s}: pull settings")
    check([t["whenUnsatisfiable"] for t in pod["topologySpreadConstraints"]] == ["DoNotSchedule"], f"{s}: explicit spread replaces the default")
    check(pod["priorityClassName"] == "system-cluster-critical" and pod["tolerations"][0]["key"] == "CriticalAddonsOnly", f"{s}: scheduling")
    check(d["spec"]["template"]["metadata"]["labels"].get("team") == "platform", f"{s}: pod labels")
    check(all(o["metadata"]["labels"].get("cost-center") == "1234" for o in objs), f"{s}: common labels on every object")
    check({e["name"]: e.get("value") for e in c["env"]}.get("RUST_LOG") == "info,sidekey_controller=debug", f"{s}: log level")


def expect_byo(objs, s):
    d, _ = controller(objs)
    check(find(objs, "CustomResourceDefinition") is None, f"{s}: no CRD")
    check(find(objs, "ServiceAccount") is None, f"{s}: no ServiceAccount")
    check(d["spec"]["template"]["spec"]["serviceAccountName"] == "sidekey-controller", f"{s}: named ServiceAccount")
    binding = find(objs, "ClusterRoleBinding")
    check(binding["subjects"][0]["name"] == "sidekey-controller", f"{s}: binding names the existing ServiceAccount")
    check(find(objs, "ClusterRole", "sidekey-edit") is None, f"{s}: no aggregated roles")
    check(find(objs, "Service") is None, f"{s}: no metrics Service")


SCENARIOS = {
    "default-values.yaml": expect_defaults,
    "single-replica-values.yaml": expect_single_replica,
    "servicemonitor-values.yaml": expect_servicemonitor,
    "custom-image-values.yaml": expect_custom_image,
    "byo-crds-and-rbac-values.yaml": expect_byo,
}

# (helm --set arguments, text the error must contain)
REJECTED = [
    (["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (["--set", "sidecarMode=sidecar"], "at '/sidecarMode': value must be one of 'auto', 'native', 'regular'"),
    (["--set", "image.digest=latest"], "at '/image/digest'"),
    (["--set", "metrics.serviceMonitor.interval=often"], "at '/metrics/serviceMonitor/interval'"),
    (["--set", "leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled: true"),
    (["--set", "metrics.service.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"], "metrics.serviceMonitor.enabled needs metrics.service.enabled"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required when serviceAccount.create is false"),
]


def crd_matches_source(objs, s):
    crd = find(objs, "CustomResourceDefinition")
    with open(os.path.join(ROOT, "crds", "sidekey.dev_authpolicies.yaml")) as f:
        source = yaml.safe_load(f)
    got = copy.deepcopy(crd)
    got["metadata"].pop("annotations", None)
    got["metadata"]["labels"] = {k: v for k, v in got["metadata"]["labels"].items() if k in source["metadata"].get("labels", {})}
    check(got == source, f"{s}: the chart's CRD differs from crds/ (run `make crds`)")


def normalize_for_kustomize(obj):
    """The plain install carries no Helm bookkeeping."""
    o = copy.deepcopy(obj)
    for labels in (o["metadata"].get("labels"), o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")):
        if labels:
            labels.pop("helm.sh/chart", None)
            if labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels["app.kubernetes.io/managed-by"] = "kustomize"
    o["metadata"].get("annotations", {}).pop("helm.sh/resource-policy", None)
    if o["metadata"].get("annotations") == {}:
        del o["metadata"]["annotations"]
    return o


INSTALL_FILES = {
    "namespace.yaml": ["Namespace"],
    "crd.yaml": ["CustomResourceDefinition"],
    "rbac.yaml": ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"],
    "controller.yaml": ["Deployment", "PodDisruptionBudget", "Service"],
}
HEADER = "# Generated from charts/sidekey (`make manifests`; default values, namespace sidekey-system). Do not edit.\n"


def install_render(objs):
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "sidekey", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    plain = [namespace] + [normalize_for_kustomize(o) for o in objs]
    files = {}
    for name, kinds in INSTALL_FILES.items():
        docs = [o for o in plain if o["kind"] in kinds]
        files[name] = HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=1000) for d in docs)
    files["kustomization.yaml"] = (
        HEADER
        + "# kubectl apply --server-side -k manifests/install   (or reference it as a base and patch it)\n"
        + yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(INSTALL_FILES)},
            sort_keys=False,
        )
    )
    return plain, files


def key(o):
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def check_install(objs, update):
    plain, files = install_render(objs)
    for name, text in files.items():
        path = os.path.join(INSTALL, name)
        if update:
            os.makedirs(INSTALL, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        current = open(path).read() if os.path.exists(path) else ""
        check(current == text, f"manifests/install/{name} is stale: run `make manifests`")
    p = run([KUBECTL, "kustomize", INSTALL])
    if not check(p.returncode == 0, f"kubectl kustomize manifests/install failed: {p.stderr}"):
        return
    built = sorted((d for d in yaml.safe_load_all(p.stdout) if d), key=key)
    check(built == sorted(plain, key=key), "kubectl kustomize manifests/install differs from helm template")
    validate_schemas(built, "manifests/install")
    print(f"ok: manifests/install builds with kustomize to the chart's {len(built) - 1} objects plus the Namespace")


def check_notes():
    """NOTES.txt renders, and the AuthPolicy it tells the user to apply is valid."""
    p = run([HELM, "install", "sidekey", CHART, "--namespace", NAMESPACE, "--dry-run=client"])
    if not check(p.returncode == 0, f"helm install --dry-run=client failed: {p.stderr}"):
        return
    notes = p.stdout.split("NOTES:\n", 1)[-1]
    lines = notes.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("apiVersion: sidekey.dev/")), None)
    if not check(start is not None, "NOTES.txt shows no AuthPolicy"):
        return
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    policy = yaml.safe_load("\n".join(block))
    sys.path.insert(0, os.path.dirname(__file__))
    import validate_crs  # noqa: E402 (sibling script)

    schemas = validate_crs.load_crds([os.path.join(ROOT, "crds", "sidekey.dev_authpolicies.yaml")])
    import jsonschema

    errors = list(jsonschema.Draft7Validator(schemas[("sidekey.dev/v1alpha1", "AuthPolicy")]).iter_errors(policy))
    check(not errors, f"NOTES.txt's AuthPolicy is invalid: {[e.message for e in errors]}")
    check(len(block) <= 8, f"NOTES.txt's AuthPolicy should stay short ({len(block)} lines)")
    print(f"ok: NOTES.txt renders a valid {len(block)}-line AuthPolicy")


def main(argv):
    update = "--update" in argv
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    v = cargo_version()
    check(chart["version"] == v and chart["appVersion"] == v, f"Chart.yaml version/appVersion {chart['version']}/{chart['appVersion']} != Cargo {v}")
    with open(os.path.join(ROOT, "crds", "sidekey.dev_authpolicies.yaml")) as a, open(os.path.join(CHART, "files", "sidekey.dev_authpolicies.yaml")) as b:
        check(a.read() == b.read(), "charts/sidekey/files/sidekey.dev_authpolicies.yaml differs from crds/ (run `make crds`)")

    p = run([HELM, "lint", "--strict", CHART, "--namespace", NAMESPACE])
    check(p.returncode == 0, f"helm lint --strict failed:\n{p.stdout}{p.stderr}")
    defaults = None
    for scenario, expect in SCENARIOS.items():
        values = os.path.join(CHART, "ci", scenario)
        lint = run([HELM, "lint", "--strict", CHART, "--namespace", NAMESPACE, "-f", values])
        check(lint.returncode == 0, f"{scenario}: helm lint --strict failed:\n{lint.stdout}{lint.stderr}")
        p, objs = template("-f", values)
        if not check(p.returncode == 0, f"{scenario}: helm template failed: {p.stderr}"):
            continue
        validate_schemas(objs, scenario)
        expect(objs, scenario)
        if scenario == "default-values.yaml":
            defaults = objs
            crd_matches_source(objs, scenario)
        print(f"ok: {scenario}: {len(objs)} objects, lint clean, valid for Kubernetes {' and '.join(K8S_VERSIONS)}")

    for args, message in REJECTED:
        p, _ = template(*args)
        check(p.returncode != 0 and message in p.stderr, f"helm template {' '.join(args)}: want an error containing {message!r}, got rc={p.returncode} {p.stderr!r}")
    print(f"ok: {len(REJECTED)} bad values rejected with a message naming the key")

    if defaults:
        check_install(defaults, update)
    check_notes()

    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
