#!/usr/bin/env python3
"""Regenerates the JSON Schemas in deploy/schemas/ from packages on PyPI (needs network to
PyPI only; scripts/validate-deploy itself runs offline on the files this writes).

- Kubernetes 1.30 kinds: from the `kubernetes-validate` wheel (its
  `kubernetes-json-schema/v1.30.0-local-strict/` directory: schemas converted from the
  Kubernetes OpenAPI spec, with `additionalProperties: false` everywhere). Each kind we use
  becomes one standalone file: the kind's schema plus, under `$defs`, every definition it
  reaches from `_definitions.json`, with the `$ref`s rewritten to `#/$defs/...`.
- KEDA ScaledObject and TriggerAuthentication (keda.sh/v1alpha1, KEDA 2.16.1): from the
  `cloudcoil-models-keda` wheel, whose pydantic models are generated from KEDA's CRDs;
  pydantic writes their JSON Schema, and this script makes it strict the same way
  (`additionalProperties: false` on every object with properties, nullable `anyOf`s
  collapsed, `metadata` replaced by Kubernetes 1.30's ObjectMeta).

Descriptions are dropped to keep the files small. Usage: python3 deploy/schemas/vendor.py
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

K8S_VALIDATE = "kubernetes-validate==1.37.0"
K8S_DIR = "kubernetes_validate/kubernetes-json-schema/v1.30.0-local-strict"
KEDA_MODELS = "cloudcoil-models-keda==2.16.1.0"
HERE = pathlib.Path(__file__).resolve().parent

# (file stem in kubernetes-validate, apiVersion, kind): exactly the kinds deploy/ renders
K8S_KINDS = [
    ("configmap-v1", "v1", "ConfigMap"),
    ("secret-v1", "v1", "Secret"),
    ("service-v1", "v1", "Service"),
    ("serviceaccount-v1", "v1", "ServiceAccount"),
    ("deployment-apps-v1", "apps/v1", "Deployment"),
    ("poddisruptionbudget-policy-v1", "policy/v1", "PodDisruptionBudget"),
    ("networkpolicy-networking-v1", "networking.k8s.io/v1", "NetworkPolicy"),
]
DEFS_URI = "/api/_definitions.json#/$defs/"


def strip(node):
    """Drops descriptions (not keywords: a property may be *named* description)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                continue
            if k == "properties" and isinstance(v, dict):
                out[k] = {pk: strip(pv) for pk, pv in v.items()}
            else:
                out[k] = strip(v)
        return out
    if isinstance(node, list):
        return [strip(x) for x in node]
    return node


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for x in node:
            yield from refs(x)


def rewrite_refs(node):
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v[len(DEFS_URI):] if k == "$ref" and v.startswith(DEFS_URI) else rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(x) for x in node]
    return node


def closure(start, defs):
    """Names of every definition reachable from `start` (refs local to _definitions.json
    are `#/$defs/X`, refs from a kind file are `/api/_definitions.json#/$defs/X`)."""
    seen, todo = set(), list(refs(start))
    while todo:
        r = todo.pop()
        name = r.rsplit("/", 1)[-1]
        if name in seen:
            continue
        seen.add(name)
        todo.extend(refs(defs[name]))
    return seen


def write(path, schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size} bytes)")


def kubernetes(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), K8S_VALIDATE], check=True)
    wheel = next(tmp.glob("kubernetes_validate-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        defs = json.loads(z.read(f"{K8S_DIR}/_definitions.json"))["$defs"]
        for stem, api_version, kind in K8S_KINDS:
            schema = json.loads(z.read(f"{K8S_DIR}/{stem}.json"))
            names = closure(schema, defs)
            out = rewrite_refs(strip(schema))
            out["$defs"] = {n: strip(defs[n]) for n in sorted(names)}
            out["$id"] = f"https://ymera.invalid/schemas/kubernetes-1.30/{stem}.json"
            out["x-source"] = f"{K8S_VALIDATE} {K8S_DIR}/{stem}.json"
            assert out["x-kubernetes-group-version-kind"], stem
            write(HERE / "kubernetes-1.30" / f"{stem}.json", out)
    return defs


def strict_pydantic(node):
    """pydantic's schema made to read like the Kubernetes ones: no titles/defaults, no
    `null` alternatives (absent is how YAML says nothing), unknown fields refused."""
    if isinstance(node, list):
        return [strict_pydantic(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in ("title", "default")}
    if "anyOf" in node:
        alts = [a for a in node["anyOf"] if a != {"type": "null"}]
        if len(alts) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**alts[0], **rest}
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {pk: strict_pydantic(pv) for pk, pv in v.items()}
        else:
            out[k] = strict_pydantic(v)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def keda(tmp, k8s_defs):
    target = tmp / "keda"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), KEDA_MODELS], check=True)
    sys.path.insert(0, str(target))
    from cloudcoil.models.keda import v1alpha1  # noqa: E402

    meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    for model, kind in ((v1alpha1.ScaledObject, "ScaledObject"), (v1alpha1.TriggerAuthentication, "TriggerAuthentication")):
        schema = strict_pydantic(model.model_json_schema(by_alias=True))
        # Kubernetes' own ObjectMeta (and what it references) instead of the model's copy
        defs = {n: v for n, v in schema["$defs"].items()}
        schema["properties"]["metadata"] = {"$ref": f"#/$defs/{meta}"}
        for n in closure({"$ref": meta}, k8s_defs) | {meta}:
            defs[n] = strip(k8s_defs[n])
        # drop the model's definitions nothing refers to any more
        used = set()
        todo = [r.rsplit("/", 1)[-1] for r in refs({k: v for k, v in schema.items() if k != "$defs"})]
        while todo:
            n = todo.pop()
            if n not in used:
                used.add(n)
                todo.extend(r.rsplit("/", 1)[-1] for r in refs(defs[n]))
        schema["$defs"] = {n: defs[n] for n in sorted(used)}
        schema["properties"]["apiVersion"] = {"type": "string", "enum": ["keda.sh/v1alpha1"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://ymera.invalid/schemas/keda-2.16/{kind.lower()}-keda-v1alpha1.json"
        schema["x-kubernetes-group-version-kind"] = [{"group": "keda.sh", "kind": kind, "version": "v1alpha1"}]
        schema["x-source"] = f"{KEDA_MODELS} (pydantic models generated from the KEDA v2.16.1 CRDs), made strict by deploy/schemas/vendor.py"
        write(HERE / "keda-2.16" / f"{kind.lower()}-keda-v1alpha1.json", schema)


def main():
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        defs = kubernetes(tmp)
        keda(tmp, defs)


if __name__ == "__main__":
    main()
