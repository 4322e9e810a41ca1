#!/usr/bin/env python3
"""A small kustomize: exactly the features k8s/ uses, so CI can render the
overlays on a machine without kubectl or kustomize (neither is a Debian
package, and nothing may be downloaded from elsewhere).

Supported: resources (files and directories), components, namespace,
labels (metadata only: includeSelectors/includeTemplates false), images,
replicas, configMapGenerator and secretGenerator (files, literals, options,
generatorOptions; kustomize's content-hash name suffix and the name
references that follow it), patches (strategic merge, from a path or
inline, `$patch: delete` for whole resources and list items, null to drop a
field). Anything else is refused by name rather than silently ignored: a
manifest that needs more must grow this file, and the comparison with
`kubectl kustomize` (tests/tests/k8s_manifests.rs) keeps the two honest.

    python3 kustomize_lite.py DIR      # prints the rendered YAML stream
"""

import base64
import copy
import hashlib
import json
import os
import sys

import yaml

KNOWN_KEYS = {
    "apiVersion", "kind", "resources", "components", "namespace", "labels",
    "images", "replicas", "configMapGenerator", "secretGenerator",
    "generatorOptions", "patches",
}

# Kinds without a namespace (only those a manifest here might hold).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
    "StorageClass", "CustomResourceDefinition", "PriorityClass",
    "IngressClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

# Strategic-merge keys of the lists our patches touch (from the Kubernetes
# API's x-kubernetes-patch-merge-key); other lists are replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "tolerations": None,
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


class KustomizeError(Exception):
    pass


def load_yaml_stream(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization_file(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def res_id(doc):
    md = doc.get("metadata", {})
    return (doc.get("kind"), md.get("namespace"), md.get("name"))


# --- name hashing (kustomize api/hasher) ---------------------------------------

def go_json(obj):
    """json.Marshal as Go writes it: sorted keys, no spaces, HTML-escaped."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def name_hash(doc):
    # kustomize (api/hasher) looks the name up as one field literally called
    # "metadata/name", finds nothing and hashes an empty name: the suffix
    # depends on the content alone. Same here, or the names would differ.
    if doc["kind"] == "ConfigMap":
        m = {"kind": "ConfigMap", "name": "", "data": doc.get("data", {})}
        if doc.get("binaryData"):
            m["binaryData"] = doc["binaryData"]
    else:
        m = {"kind": "Secret", "type": doc.get("type", "Opaque"),
             "name": "", "data": doc.get("data", {})}
    hexd = hashlib.sha256(go_json(m).encode("utf-8")).hexdigest()
    # kustomize maps a few hex digits to letters so a suffix never reads as
    # a number or a word.
    table = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return "".join(table.get(c, c) for c in hexd[:10])


# --- generators --------------------------------------------------------------

def kustomize_base64(raw):
    """Base64 as kyaml writes Secret data: lines of 70, each ending in a
    newline once there is more than one line's worth (it enters the hash)."""
    enc = base64.b64encode(raw).decode("ascii")
    if len(enc) // 70 + 1 == 1:
        return enc
    return "".join(enc[i:i + 70] + "\n" for i in range(0, len(enc), 70))


def generate(kind, spec, base_dir, gen_options):
    if spec.get("behavior", "create") != "create":
        raise KustomizeError(f"{spec['name']}: generator behavior {spec['behavior']!r} not supported")
    for key in spec:
        if key not in {"name", "files", "literals", "options", "type", "behavior"}:
            raise KustomizeError(f"{spec['name']}: generator field {key!r} not supported")
    data = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.partition("=")
        if not rel:
            key, rel = os.path.basename(entry), entry
        with open(os.path.join(base_dir, rel), "rb") as f:
            raw = f.read()
        data[key] = raw
    for entry in spec.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = value.encode("utf-8")
    doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "ConfigMap":
        doc["data"] = {k: v.decode("utf-8") for k, v in data.items()}
    else:
        doc["type"] = spec.get("type", "Opaque")
        doc["data"] = {k: kustomize_base64(v) for k, v in data.items()}
    opts = dict(gen_options)
    opts.update(spec.get("options", {}))
    labels = dict(gen_options.get("labels", {}))
    labels.update(spec.get("options", {}).get("labels", {}))
    annotations = dict(gen_options.get("annotations", {}))
    annotations.update(spec.get("options", {}).get("annotations", {}))
    if labels:
        doc["metadata"]["labels"] = labels
    if annotations:
        doc["metadata"]["annotations"] = annotations
    hashed = not opts.get("disableNameSuffixHash", False)
    return doc, hashed


# --- strategic merge patch ---------------------------------------------------

def smp(target, patch, field=None):
    if isinstance(patch, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = smp(out[k], v, k)
            else:
                out[k] = strip_directives(v)
        return out
    if isinstance(patch, list) and isinstance(target, list):
        key = MERGE_KEYS.get(field)
        if field == "ports":
            # A container's ports merge on containerPort, a Service's on port.
            key = "containerPort" if any("containerPort" in i for i in patch) else "port"
        if key is None:
            return strip_directives(patch)
        # kustomize (kyaml) puts the patch's items first, in the patch's
        # order, then the target's untouched items in theirs.
        head, used = [], set()
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"patch list {field!r}: item without merge key {key!r}")
            idx = next((i for i, t in enumerate(target) if t.get(key) == item[key]), None)
            if idx is not None:
                used.add(idx)
            if item.get("$patch") == "delete":
                continue
            head.append(strip_directives(item) if idx is None else smp(target[idx], item, None))
        return head + [copy.deepcopy(t) for i, t in enumerate(target) if i not in used]
    return strip_directives(patch)


def strip_directives(v):
    if isinstance(v, dict):
        return {k: strip_directives(x) for k, x in v.items() if k != "$patch" and x is not None}
    if isinstance(v, list):
        return [strip_directives(x) for x in v]
    return v


def apply_patches(resources, patches, base_dir):
    for p in patches:
        for key in p:
            if key not in {"path", "patch"}:
                raise KustomizeError(f"patches: field {key!r} (targets, options) not supported")
        if "path" in p:
            docs = load_yaml_stream(os.path.join(base_dir, p["path"]))
        else:
            docs = [d for d in yaml.safe_load_all(p["patch"]) if d is not None]
        for doc in docs:
            apply_patch(resources, doc, p)


def apply_patch(resources, doc, origin):
    if isinstance(doc, list):
        raise KustomizeError(f"{origin}: JSON 6902 patches not supported")
    kind, ns, name = res_id(doc)
    matches = [i for i, r in enumerate(resources)
               if r["kind"] == kind and r["metadata"]["name"] == name
               and (ns is None or r["metadata"].get("namespace") == ns)]
    if len(matches) != 1:
        raise KustomizeError(f"patch for {kind}/{name}: {len(matches)} matching resources")
    i = matches[0]
    if doc.get("$patch") == "delete":
        del resources[i]
    else:
        resources[i] = smp(resources[i], doc)


# --- transformers ------------------------------------------------------------

def pod_specs(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "Pod":
        return [spec]
    if doc["kind"] == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    if doc["kind"] in WORKLOAD_KINDS:
        return [spec.get("template", {}).get("spec", {})]
    return []


def set_image(image, rule):
    name, tag, digest = image, None, None
    if "@" in name:
        name, digest = name.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    if digest:
        return f"{name}@{digest}"
    return f"{name}:{tag}" if tag else name


def transform(resources, k):
    ns = k.get("namespace")
    if ns:
        for r in resources:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = ns
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError("labels: includeSelectors/includeTemplates not supported")
        for r in resources:
            r["metadata"].setdefault("labels", {}).update(entry.get("pairs", {}))
    for rule in k.get("images", []):
        for r in resources:
            for spec in pod_specs(r):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    c["image"] = set_image(c["image"], rule)
    for rule in k.get("replicas", []):
        hit = [r for r in resources if r["metadata"]["name"] == rule["name"]
               and r["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}]
        if not hit:
            raise KustomizeError(f"replicas: no workload named {rule['name']}")
        for r in hit:
            r["spec"]["replicas"] = rule["count"]


def rename_refs(resources, renames):
    """Point every reference to a generated ConfigMap/Secret at its hashed
    name — only from the same namespace, as kustomize does (a generator in
    an overlay without `namespace:` lands elsewhere and renames nothing)."""

    def fix(obj, key, table):
        if obj and obj.get(key) in table:
            obj[key] = table[obj[key]]

    for r in resources:
        ns = r["metadata"].get("namespace")
        cms = renames.get(("ConfigMap", ns), {})
        secrets = renames.get(("Secret", ns), {})
        for spec in pod_specs(r):
            for v in spec.get("volumes", []):
                fix(v.get("configMap"), "name", cms)
                fix(v.get("secret"), "secretName", secrets)
                for src in v.get("projected", {}).get("sources", []):
                    fix(src.get("configMap"), "name", cms)
                    fix(src.get("secret"), "name", secrets)
            for s in spec.get("imagePullSecrets", []):
                fix(s, "name", secrets)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                for e in c.get("env", []):
                    vf = e.get("valueFrom", {})
                    fix(vf.get("configMapKeyRef"), "name", cms)
                    fix(vf.get("secretKeyRef"), "name", secrets)
                for e in c.get("envFrom", []):
                    fix(e.get("configMapRef"), "name", cms)
                    fix(e.get("secretRef"), "name", secrets)


# --- build -------------------------------------------------------------------

def build(directory, component=False):
    directory = os.path.abspath(directory)
    k = load_yaml_stream(kustomization_file(directory))[0]
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{directory}: kustomization fields not supported: {sorted(unknown)}")
    want = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != want:
        raise KustomizeError(f"{directory}: expected kind {want}")
    return build_into([], {}, directory, k)


def build_into(resources, renames, directory, k):
    for entry in k.get("resources", []):
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            sub, sub_renames = build(path)
            resources.extend(sub)
            for kind_ns, table in sub_renames.items():
                renames.setdefault(kind_ns, {}).update(table)
        else:
            resources.extend(load_yaml_stream(path))
    for entry in k.get("components", []):
        path = os.path.join(directory, entry)
        ck = load_yaml_stream(kustomization_file(path))[0]
        if ck.get("kind") != "Component":
            raise KustomizeError(f"{path}: not a Component")
        unknown = set(ck) - KNOWN_KEYS
        if unknown:
            raise KustomizeError(f"{path}: component fields not supported: {sorted(unknown)}")
        build_into(resources, renames, path, ck)
    gen_options = k.get("generatorOptions", {})
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(key, []):
            doc, hashed = generate(kind, spec, directory, gen_options)
            resources.append(doc)
            doc["_hashed"] = hashed
    apply_patches(resources, k.get("patches", []), directory)
    transform(resources, k)
    new = {}
    for r in resources:
        if r.pop("_hashed", False):
            old = r["metadata"]["name"]
            r["metadata"]["name"] = f"{old}-{name_hash(r)}"
            kind_ns = (r["kind"], r["metadata"].get("namespace"))
            new.setdefault(kind_ns, {})[old] = r["metadata"]["name"]
    rename_refs(resources, new)
    for kind_ns, table in new.items():
        renames.setdefault(kind_ns, {}).update(table)
    seen = set()
    for r in resources:
        rid = (r.get("apiVersion"),) + res_id(r)
        if rid in seen:
            raise KustomizeError(f"duplicate resource {rid}")
        seen.add(rid)
    return resources, renames


def render(directory):
    resources, _ = build(directory)
    return resources


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        docs = render(argv[1])
    except (KustomizeError, OSError, yaml.YAMLError) as e:
        print(f"kustomize_lite: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, default_flow_style=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
