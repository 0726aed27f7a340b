#!/usr/bin/env python3
"""Generate `builtin-types.json`: the merge semantics of Kubernetes' built-in kinds.

Input: an upstream OpenAPI v2 document (`swagger.json`) of Kubernetes, e.g.
`api/openapi-spec/swagger.json` of kubernetes/kubernetes, or the identical
`kubernetes/swagger.json.unprocessed` of kubernetes-client/python.

    python3 gen_builtin_types.py swagger.json > builtin-types.json

Only what strategic merge patch and server-side apply need is kept:
for every definition, the fields whose value is a struct with such semantics
(`ref`), a map of such structs (`values`), or a list with merge semantics
(`x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy`,
`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`), plus struct-level
`x-kubernetes-map-type`. Fields not listed behave as the defaults: objects merge
key by key, lists are atomic (SSA) / replaced (SMP), scalars are replaced.
"""
import json
import sys

PREFIXES = [
    ("io.k8s.api.", ""),
    ("io.k8s.apimachinery.pkg.apis.meta.", "meta."),
    ("io.k8s.apimachinery.pkg.", "pkg."),
    ("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.", "apiextensions."),
    ("io.k8s.kube-aggregator.pkg.apis.apiregistration.", "apiregistration."),
]


def short(name):
    for long, s in PREFIXES:
        if name.startswith(long):
            return s + name[len(long):]
    return name


def ref_of(schema):
    ref = schema.get("$ref")
    if ref is None and "allOf" in schema and len(schema["allOf"]) == 1:
        ref = schema["allOf"][0].get("$ref")
    return short(ref.split("/")[-1]) if ref else None


def main():
    spec = json.load(open(sys.argv[1]))
    defs = spec["definitions"]
    raw = {}
    for name, d in defs.items():
        fields = {}
        for fname, f in (d.get("properties") or {}).items():
            e = {}
            if f.get("type") == "array":
                e["items"] = ref_of(f.get("items", {}))
                for src, dst in [
                    ("x-kubernetes-list-type", "listType"),
                    ("x-kubernetes-list-map-keys", "keys"),
                    ("x-kubernetes-patch-merge-key", "mergeKey"),
                    ("x-kubernetes-patch-strategy", "strategy"),
                ]:
                    if src in f:
                        e[dst] = f[src]
            elif f.get("type") == "object" and "additionalProperties" in f:
                e["values"] = ref_of(f["additionalProperties"])
                if "x-kubernetes-map-type" in f:
                    e["mapType"] = f["x-kubernetes-map-type"]
            else:
                r = ref_of(f)
                if r:
                    e["ref"] = r
                if "x-kubernetes-patch-strategy" in f:
                    e["strategy"] = f["x-kubernetes-patch-strategy"]
                if "x-kubernetes-map-type" in f:
                    e["mapType"] = f["x-kubernetes-map-type"]
            fields[fname] = e
        t = {"fields": fields}
        if "x-kubernetes-map-type" in d:
            t["mapType"] = d["x-kubernetes-map-type"]
        raw[short(name)] = t

    # Prune to a fixpoint: a type matters when it has a map type or a field that matters.
    interesting = {n for n, t in raw.items() if "mapType" in t}
    while True:
        before = len(interesting)
        for n, t in raw.items():
            for e in t["fields"].values():
                semantic = any(k in e for k in ("listType", "keys", "mergeKey", "strategy", "mapType"))
                inner = any(e.get(k) in interesting for k in ("ref", "items", "values"))
                if semantic or inner:
                    interesting.add(n)
        if len(interesting) == before:
            break

    types = {}
    for n in sorted(interesting):
        t = raw[n]
        out = {}
        for fname, e in sorted(t["fields"].items()):
            semantic = {k: v for k, v in e.items() if k in ("listType", "keys", "mergeKey", "strategy", "mapType")}
            refs = {k: v for k, v in e.items() if k in ("ref", "items", "values") and v in interesting}
            if semantic or refs:
                out[fname] = {**refs, **semantic}
        entry = {"fields": out}
        if "mapType" in t:
            entry["mapType"] = t["mapType"]
        types[n] = entry

    kinds = {}
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            if len(d.get("x-kubernetes-group-version-kind")) != 1:
                continue  # meta types shared by every group (DeleteOptions, WatchEvent ...)
            g, v, k = gvk["group"], gvk["version"], gvk["kind"]
            api_version = f"{g}/{v}" if g else v
            kinds[f"{api_version}/{k}"] = short(name) if short(name) in interesting else None

    json.dump({"kinds": dict(sorted(kinds.items())), "types": types}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


main()
