#!/usr/bin/env python3
"""Validate every Kubernetes object the project ships against the Kubernetes OpenAPI schemas
(the kubernetes-validate package, strict: an unknown field is an error), the objects inside
the ACM Policy included. Kinds with no schema there (SecurityContextConstraints, Policy,
Placement, ClusterGroupUpgrade, PrometheusRule) are listed, not passed over; their structure
and the privilege lint are tests in tests/packaging.rs.

    tests/validate-manifests.py [KUBERNETES_VERSION]    # default 1.30.0 (OpenShift 4.17)
"""

import glob
import os
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.30.0"


def objects():
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                yield rel, doc
                if doc.get("kind") == "Policy":
                    for t in doc["spec"]["policy-templates"]:
                        for o in t["objectDefinition"]["spec"]["object-templates"]:
                            yield f"{rel} (in the Policy)", o["objectDefinition"]


def main():
    failed, unvalidated, passed = [], set(), 0
    for rel, obj in objects():
        kind = f"{obj.get('apiVersion')}/{obj.get('kind')}"
        obj = dict(obj)
        # A policy's Job carries the status it must reach; the schema is of what is applied.
        obj.pop("status", None)
        if "name" not in obj.get("metadata", {}) and "generateName" in obj.get("metadata", {}):
            obj["metadata"] = dict(obj["metadata"], name=obj["metadata"]["generateName"] + "x")
        try:
            kubernetes_validate.validate(obj, VERSION, strict=True)
            passed += 1
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(kind)
        except kubernetes_validate.ValidationError as e:
            failed.append(f"{rel}: {kind}: {e.message} at {'/'.join(str(p) for p in e.path)}")
        except Exception as e:  # a schema the package cannot load is a failure too
            failed.append(f"{rel}: {kind}: {e!r}")
    print(f"validate-manifests: {passed} objects valid against Kubernetes {VERSION}")
    if unvalidated:
        print("validate-manifests: no Kubernetes schema for (checked by tests/packaging.rs): " + ", ".join(sorted(unvalidated)))
    for f in failed:
        print(f"validate-manifests: INVALID {f}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
