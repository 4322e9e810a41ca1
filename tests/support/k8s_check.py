#!/usr/bin/env python3
"""Checks of k8s/ and the Dockerfile that need no cluster and no network,
driven by tests/tests/k8s_manifests.rs. Each subcommand prints one JSON
document on stdout; the Rust tests assert on it.

  validate OVERLAY... [--versions 1.30.0,1.33.0]
      render (kustomize_lite) and validate every resource against the
      Kubernetes JSON schemas of each version (kubernetes-validate, strict,
      offline); exit 1 on any error.
  compare OVERLAY...
      `kubectl kustomize` and kustomize_lite render the same resources.
  facts OVERLAY
      what the tests assert on: who may reach each workload (NetworkPolicy
      selectors evaluated against the rendered pods), Services, the
      frontend's grace period against frontend.drain_grace, endpoints.
  config-check OVERLAY --authrelay BIN
      lay out each authrelay container's mounts (ConfigMap, Secrets,
      volumes) in a scratch root as the kubelet would, run
      `authrelay config check` with that container's AUTHRELAY__* env, and
      check that every file the configuration names is mounted.
  dockerfile PATH
      stages, base images, user, build flags of the Dockerfile.
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_lite  # noqa: E402

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
AUTHRELAY_BINARIES = {"smtp-frontend", "sasl-auth", "credential-store", "relay-queue", "authrelay"}
# Files the configuration names, and which binaries open them.
FILE_KEYS = {
    ("frontend", "tls", "cert"): {"smtp-frontend"},
    ("frontend", "tls", "key"): {"smtp-frontend"},
    ("admin", "token_file"): {"credential-store", "sasl-auth", "authrelay"},
    ("relay_queue", "authinfo_file"): {"relay-queue"},
    # Mutual TLS (prod-mtls): every binary presents its certificate.
    ("internal_tls", "cert"): set(AUTHRELAY_BINARIES),
    ("internal_tls", "key"): set(AUTHRELAY_BINARIES),
    ("internal_tls", "ca"): set(AUTHRELAY_BINARIES),
}


def die(msg):
    print(json.dumps({"error": msg}))
    sys.exit(1)


def render(overlay):
    try:
        return kustomize_lite.render(overlay)
    except (kustomize_lite.KustomizeError, OSError, yaml.YAMLError) as e:
        die(f"{overlay}: does not render: {e}")


def key(doc):
    md = doc.get("metadata", {})
    return f"{doc.get('apiVersion')}/{doc.get('kind')}/{md.get('namespace')}/{md.get('name')}"


# --- validate ------------------------------------------------------------------

def cmd_validate(args):
    try:
        import kubernetes_validate
    except ImportError:
        die("python module kubernetes_validate missing: python3 -m pip install kubernetes-validate "
            "(scripts/test.sh installs it)")
    out, failed = {}, False
    for overlay in args.overlays:
        docs = render(overlay)
        errors = []
        for version in args.versions.split(","):
            for d in docs:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    errors.append(f"{version} {key(d)}: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{version} {key(d)}: {e.message}")
        failed |= bool(errors)
        out[overlay] = {"resources": len(docs), "kinds": sorted({d["kind"] for d in docs}), "errors": errors}
    print(json.dumps(out, indent=1))
    sys.exit(1 if failed else 0)


# --- compare -------------------------------------------------------------------

def golden_path(golden_dir, overlay):
    return os.path.join(golden_dir, os.path.basename(os.path.normpath(overlay)) + ".yaml")


def diff(lite, real):
    differing = sorted(k for k in set(lite) & set(real)
                       if json.dumps(lite[k], sort_keys=True) != json.dumps(real[k], sort_keys=True))
    return {"only_kubectl": sorted(set(real) - set(lite)), "only_lite": sorted(set(lite) - set(real)),
            "differing": differing}


def cmd_compare(args):
    """kustomize_lite against real kustomize. Where kubectl exists, against
    `kubectl kustomize` live — and the stored golden renderings must match it
    too; elsewhere (CI on a fresh machine: kubectl is no Debian package)
    against those golden renderings, made by `golden` where kubectl exists."""
    kubectl = shutil.which("kubectl")
    out = {}
    for overlay in args.overlays:
        lite = {key(d): d for d in render(overlay)}
        gpath = golden_path(args.golden, overlay)
        golden_text = open(gpath).read() if os.path.exists(gpath) else None
        if kubectl:
            run = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True)
            if run.returncode != 0:
                out[overlay] = {"kubectl_error": run.stderr.strip()}
                continue
            real_text, source = run.stdout, "kubectl"
        elif golden_text is not None:
            real_text, source = golden_text, "golden"
        else:
            die(f"kubectl not on PATH and no golden rendering at {gpath}")
        real = {key(d): d for d in yaml.safe_load_all(real_text) if d}
        r = {"resources": len(real), "source": source, **diff(lite, real)}
        if source == "kubectl":
            golden = {key(d): d for d in yaml.safe_load_all(golden_text or "") if d}
            r["golden_stale"] = diff(golden, real) != {"only_kubectl": [], "only_lite": [], "differing": []}
        out[overlay] = r
    print(json.dumps(out, indent=1))


def cmd_golden(args):
    """Store `kubectl kustomize` renderings as the golden files (run where
    kubectl exists, after changing k8s/)."""
    kubectl = shutil.which("kubectl") or die("kubectl not on PATH")
    os.makedirs(args.golden, exist_ok=True)
    for overlay in args.overlays:
        run = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True, check=True)
        with open(golden_path(args.golden, overlay), "w") as f:
            f.write(run.stdout)


# --- facts ---------------------------------------------------------------------

def pod_template(doc):
    return doc.get("spec", {}).get("template", {})


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
        labels = pod_template(w).get("metadata", {}).get("labels", {})
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
                                if o["metadata"].get("namespace") == ns and selector_matches(
                                    peer.get("podSelector"),
                                    pod_template(o).get("metadata", {}).get("labels", {}))]
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


def mounted_config(docs, workload):
    """The authrelay.toml this workload's pods read, with their env overrides."""
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    spec = pod_template(workload)["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    c = spec["containers"][0]
    for m in c.get("volumeMounts", []):
        if m["mountPath"] == "/etc/authrelay/authrelay.toml":
            cm = cms[vols[m["name"]]["configMap"]["name"]]
            cfg = tomllib.loads(cm["data"][m.get("subPath", "authrelay.toml")])
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            return cfg, env
    return None, {}


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
                                  pod_template(w).get("metadata", {}).get("labels", {}).get(k) == v
                                  for k, v in spec["selector"].items())),
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
    hpas = {d["spec"]["scaleTargetRef"]["name"]: {"min": d["spec"].get("minReplicas"), "max": d["spec"]["maxReplicas"]}
            for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    pdbs = {d["metadata"]["name"]: sorted(n for n, w in workloads.items() if selector_matches(
        d["spec"]["selector"], pod_template(w).get("metadata", {}).get("labels", {})))
        for d in docs if d["kind"] == "PodDisruptionBudget"}
    print(json.dumps({
        "namespaces": sorted({d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"},
                             key=str),
        "workloads": {n: {"kind": w["kind"], "replicas": w["spec"].get("replicas"),
                          "images": [c["image"] for c in pod_template(w)["spec"]["containers"]],
                          "volumeClaimTemplates": [v["metadata"]["name"] for v in w["spec"].get("volumeClaimTemplates", [])],
                          "topologySpread": [t["topologyKey"] for t in pod_template(w)["spec"].get("topologySpreadConstraints", [])]}
                      for n, w in workloads.items()},
        "reachability": reachability(docs),
        "services": services,
        "frontend": frontend,
        "endpoints": endpoints,
        "hpa": hpas,
        "pdb": pdbs,
    }, indent=1, sort_keys=True))


# --- config-check ------------------------------------------------------------

PLACEHOLDER_SECRET_VALUES = {
    # Secrets prod expects the operator to create: stand-ins of the right shape.
    "token": "placeholder-admin-token-0123456789abcdef\n",
    "authinfo": "# no next-hop credentials\n",
    "database-url": "postgres://authrelay:placeholder@postgres:5432/authrelay",
    "password": "placeholder",
}


def secret_data(docs, name):
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] == name:
            return {k: base64.b64decode(v) for k, v in d.get("data", {}).items()}
    return None


def lay_out(docs, spec, container, root):
    """Write what the kubelet would mount into this container under root."""
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {v["metadata"]["name"] for v in spec.get("_claims", [])}
    problems = []
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
            files = secret_data(docs, v["secret"]["secretName"])
            if files is None:
                # Created by the operator (prod): stand-ins, keyed as the README says.
                files = {k: PLACEHOLDER_SECRET_VALUES.get(k, "placeholder\n").encode()
                         for k in secret_keys_expected(v["secret"]["secretName"])}
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
    return problems


def secret_keys_expected(name):
    return {
        "smtp-tls": ["tls.crt", "tls.key"],
        "authrelay-admin-token": ["token"],
        "relay-queue-authinfo": ["authinfo"],
        "credential-store-db": ["database-url"],
        "postgres-auth": ["password"],
    }.get(name, ["tls.crt", "tls.key", "ca.crt"])


def rebase(text, root):
    return text.replace("/etc/authrelay/", root + "/etc/authrelay/").replace(
        "/var/lib/authrelay", root + "/var/lib/authrelay")


def lookup(cfg, path):
    for p in path:
        if not isinstance(cfg, dict) or p not in cfg:
            return None
        cfg = cfg[p]
    return cfg


def cmd_config_check(args):
    docs = render(args.overlay)
    results = []
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        spec = dict(pod_template(w)["spec"])
        spec["_claims"] = w["spec"].get("volumeClaimTemplates", [])
        for c in spec["containers"]:
            binary = os.path.basename(c.get("command", [""])[0])
            if binary not in AUTHRELAY_BINARIES and binary != "sleep":
                continue
            # The admin pod runs the authrelay CLI through kubectl exec.
            binary = "authrelay" if binary == "sleep" else binary
            root = tempfile.mkdtemp(prefix=f"k8s-{w['metadata']['name']}-")
            problems = lay_out(docs, spec, c, root)
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
            # The files this binary opens must be where the config says.
            cfg = tomllib.loads(rebase(text, root))
            for path, users in FILE_KEYS.items():
                value = lookup(cfg, path)
                env_name = "AUTHRELAY__" + "__".join(p.upper() for p in path)
                value = env.get(env_name, value)
                if binary in users and value and not os.path.isfile(value):
                    problems.append(f"{'.'.join(path)} = {value.replace(root, '')} is not mounted in this container")
            results.append({
                "workload": w["metadata"]["name"],
                "binary": binary,
                "exit": run.returncode,
                "stderr": run.stderr[-2000:],
                "effective": run.stdout,
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
                           "run": [], "user": None, "copy_from": [], "entrypoint": None})
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
    print(json.dumps({"stages": stages}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("overlays", nargs="+")
    v.add_argument("--versions", default="1.30.0,1.33.0")
    c = sub.add_parser("compare")
    c.add_argument("overlays", nargs="+")
    c.add_argument("--golden", required=True)
    g = sub.add_parser("golden")
    g.add_argument("overlays", nargs="+")
    g.add_argument("--golden", required=True)
    f = sub.add_parser("facts")
    f.add_argument("overlay")
    cc = sub.add_parser("config-check")
    cc.add_argument("overlay")
    cc.add_argument("--authrelay", required=True)
    d = sub.add_parser("dockerfile")
    d.add_argument("path")
    args = ap.parse_args()
    {"validate": cmd_validate, "compare": cmd_compare, "golden": cmd_golden, "facts": cmd_facts,
     "config-check": cmd_config_check, "dockerfile": cmd_dockerfile}[args.cmd](args)


if __name__ == "__main__":
    main()
