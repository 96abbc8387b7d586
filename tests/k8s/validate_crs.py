#!/usr/bin/env python3
"""Validates custom resources (AuthPolicy, HTTPRoute, ReferenceGrant) against their CRDs'
OpenAPI schemas, strictly: unknown fields are errors, as with `kubectl apply
--validate=strict`. CEL rules are not evaluated here (the Rust tests run them).

usage: validate_crs.py --crd CRD.yaml... -- FILE.yaml...
       validate_crs.py --crd ... --expect-invalid -- FILE.yaml   (must fail)
"""
import sys

import jsonschema
import yaml


def strict(schema):
    """Adds additionalProperties: false where the API server would prune unknown fields."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("nullable"):
        t = schema.get("type")
        if isinstance(t, str):
            schema["type"] = [t, "null"]
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for sub in schema.get(key, {}).values():
            strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            strict(sub)
    return schema


def load_crds(paths):
    schemas = {}
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group = doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                for v in doc["spec"]["versions"]:
                    schema = strict(v["schema"]["openAPIV3Schema"])
                    # apiVersion/kind/metadata are checked by the API server itself.
                    schema.setdefault("properties", {}).update(
                        {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
                    )
                    schemas[(f"{group}/{v['name']}", kind)] = schema
    return schemas


def main(argv):
    sep = argv.index("--")
    opts, files = argv[:sep], argv[sep + 1 :]
    expect_invalid = "--expect-invalid" in opts
    crds = [o for o in opts if not o.startswith("--")]
    schemas = load_crds(crds)
    known_groups = {av.split("/")[0] for av, _ in schemas}
    errors, checked = [], 0
    for path in files:
        with open(path) as f:
            for n, doc in enumerate(yaml.safe_load_all(f), 1):
                if not doc:
                    continue
                av, kind = doc.get("apiVersion", ""), doc.get("kind", "")
                if av.split("/")[0] not in known_groups:
                    continue
                schema = schemas.get((av, kind))
                name = f"{path}: document {n} ({kind} {doc.get('metadata', {}).get('name')})"
                if schema is None:
                    errors.append(f"{name}: no CRD serves {av} {kind}")
                    continue
                checked += 1
                for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                    errors.append(f"{name}: {'.'.join(str(p) for p in e.absolute_path)}: {e.message}")
    if expect_invalid:
        if not errors:
            print(f"FAIL: expected {files} to be rejected", file=sys.stderr)
            return 1
        print(f"ok: rejected as expected ({errors[0]})")
        return 0
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if not errors:
        print(f"ok: {checked} custom resources valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
