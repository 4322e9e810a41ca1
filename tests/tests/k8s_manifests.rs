//! The Kubernetes manifests (k8s/) and the Dockerfile, checked with no
//! cluster: every overlay renders (our kustomize_lite, and `kubectl
//! kustomize` where it exists — the two must agree), validates against the
//! Kubernetes JSON schemas offline (kubernetes-validate, strict), wires its
//! pods the way the binaries expect (`authrelay config check` on each
//! container's mounted config and env), and keeps the promises the issue
//! makes: only frontends reachable from outside, credential-store only from
//! sasl-auth and the admin pod, Redis only from its users, a headless
//! sasl-auth Service, `externalTrafficPolicy: Local`, a grace period that
//! covers the drain. The assertions evaluate the NetworkPolicy selectors
//! against the rendered pod labels (tests/support/k8s_check.py).

use std::path::{Path, PathBuf};
use std::process::Command;

use authrelay_e2e::*;
use serde_json::Value;

const OVERLAYS: [&str; 3] = ["dev", "prod", "prod-mtls"];
/// Oldest Kubernetes we claim (preStop `sleep` is on by default from 1.30)
/// and a current one.
const VERSIONS: &str = "1.30.0,1.33.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn overlay(name: &str) -> String {
    repo().join("k8s/overlays").join(name).display().to_string()
}

/// Run k8s_check.py; returns (exit success, parsed stdout).
fn check_in(k8s_root: &Path, args: &[&str]) -> (bool, Value) {
    let out = Command::new("python3")
        .arg(support("k8s_check.py"))
        .args(args)
        .current_dir(k8s_root)
        .output()
        .expect("python3 is missing: apt-get install python3 (scripts/test.sh does it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("k8s_check.py {args:?} printed no JSON ({e}):\n{stdout}\n{stderr}")
    });
    if let Some(err) = value.get("error") {
        panic!("k8s_check.py {args:?}: {err}");
    }
    (out.status.success(), value)
}

fn check(args: &[&str]) -> (bool, Value) {
    check_in(&repo(), args)
}

fn facts(name: &str) -> Value {
    check(&["facts", &overlay(name)]).1
}

fn sources(facts: &Value, workload: &str) -> Vec<String> {
    let r = &facts["reachability"][workload];
    assert_eq!(
        r["isolated"], true,
        "{workload}: no NetworkPolicy isolates it: {r}"
    );
    let mut v: Vec<String> = r["sources"]
        .as_object()
        .unwrap_or_else(|| panic!("{workload}: not rendered: {facts}"))
        .keys()
        .cloned()
        .collect();
    v.sort();
    v
}

#[test]
fn every_overlay_renders_and_passes_strict_kubernetes_schema_validation() {
    let mut args = vec!["validate".to_owned()];
    args.extend(OVERLAYS.iter().map(|o| overlay(o)));
    args.push("--versions".into());
    args.push(VERSIONS.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, report) = check(&args);
    assert!(ok, "schema validation failed:\n{report:#}");
    for o in OVERLAYS {
        let r = &report[overlay(o)];
        assert_eq!(r["errors"], serde_json::json!([]), "{o}: {r:#}");
        let kinds: Vec<&str> = r["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for k in [
            "Deployment",
            "StatefulSet",
            "Service",
            "NetworkPolicy",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&k), "{o} renders no {k}: {kinds:?}");
        }
    }
    let prod = &report[overlay("prod")]["kinds"];
    for k in ["HorizontalPodAutoscaler", "PodDisruptionBudget"] {
        assert!(
            prod.as_array().unwrap().iter().any(|x| x == k),
            "prod has no {k}"
        );
    }
}

#[test]
fn a_broken_manifest_fails_validation_and_a_missing_mount_fails_config_check() {
    // Work on a copy: the real tree stays untouched.
    let dir = scratch("k8s-broken");
    let copy = dir.join("k8s");
    copy_dir(&repo().join("k8s"), &copy);
    let fe = copy.join("base/smtp-frontend.yaml");
    let text = std::fs::read_to_string(&fe).unwrap();
    std::fs::write(
        &fe,
        text.replacen("containerPort: 2525", "containerPort: \"twenty-five\"", 1),
    )
    .unwrap();
    let broken = copy.join("overlays/prod").display().to_string();
    let (ok, report) = check_in(&dir, &["validate", &broken, "--versions", VERSIONS]);
    assert!(!ok, "a string port validated: {report:#}");
    let errors = report[&broken]["errors"].to_string();
    assert!(
        errors.contains("Deployment/authrelay/smtp-frontend") && errors.contains("containerPort"),
        "the error names the resource and the field: {errors}"
    );

    // sasl-auth without the admin token mounted would fail at start: the
    // config check catches it before any cluster does.
    std::fs::write(&fe, text).unwrap();
    let sa = copy.join("base/sasl-auth.yaml");
    let text = std::fs::read_to_string(&sa).unwrap();
    let cut = text.replacen(
        "            - name: admin-token\n              mountPath: /etc/authrelay/admin-token\n              readOnly: true\n",
        "",
        1,
    );
    assert_ne!(
        cut, text,
        "the sasl-auth mount to cut is where the test expects it"
    );
    std::fs::write(&sa, cut).unwrap();
    let authrelay = bin("authrelay").display().to_string();
    let (_, results) = check_in(&dir, &["config-check", &broken, "--authrelay", &authrelay]);
    let sasl = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == "sasl-auth")
        .expect("sasl-auth checked");
    assert_eq!(sasl["ok"], false, "{sasl:#}");
    assert!(
        sasl["problems"].to_string().contains("admin.token_file"),
        "{sasl:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn kustomize_lite_renders_exactly_what_kubectl_kustomize_renders() {
    // kubectl is no Debian package and nothing may be downloaded from its
    // site. Where kubectl exists, kustomize_lite is compared with it live and
    // the stored golden renderings must match it too; elsewhere (CI on a
    // fresh machine) kustomize_lite is compared with those golden renderings
    // — regenerate them with `python3 tests/support/k8s_check.py golden
    // k8s/overlays/* --golden tests/support/k8s_golden` after changing k8s/.
    let golden = repo()
        .join("tests/support/k8s_golden")
        .display()
        .to_string();
    let mut args = vec!["compare".to_owned(), "--golden".to_owned(), golden];
    args.extend(OVERLAYS.iter().map(|o| overlay(o)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, report) = check(&args);
    for o in OVERLAYS {
        let r = &report[overlay(o)];
        assert!(r.get("kubectl_error").is_none(), "{o}: {r:#}");
        assert!(r["resources"].as_u64().unwrap() > 20, "{o}: {r:#}");
        for k in ["only_kubectl", "only_lite", "differing"] {
            assert_eq!(r[k], serde_json::json!([]), "{o}: {k}: {r:#}");
        }
        if r["source"] == "kubectl" {
            assert_eq!(
                r["golden_stale"], false,
                "{o}: regenerate tests/support/k8s_golden (see above)"
            );
        }
    }
}

#[test]
fn credential_store_is_reachable_only_from_sasl_auth_and_the_admin_pod() {
    for o in OVERLAYS {
        let f = facts(o);
        let r = &f["reachability"]["credential-store"];
        assert!(
            r["policies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "credential-store"),
            "{o}: the credential-store NetworkPolicy does not select its pods: {r:#}"
        );
        assert_eq!(
            sources(&f, "credential-store"),
            ["authrelay-admin", "sasl-auth"],
            "{o}: {r:#}"
        );
        assert_eq!(r["sources"]["sasl-auth"], serde_json::json!(["7342"]));
        // The labels the policy matched are the Deployment's pod labels.
        assert_eq!(
            r["pod_labels"]["app.kubernetes.io/name"], "credential-store",
            "{o}: {r:#}"
        );
    }
}

#[test]
fn only_the_frontends_are_reachable_from_outside_and_redis_only_from_its_users() {
    for o in OVERLAYS {
        let f = facts(o);
        for (w, r) in f["reachability"].as_object().unwrap() {
            let outside: Vec<&String> = r["sources"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|s| s.starts_with("<any") || s.starts_with("<ipBlock"))
                .collect();
            if w == "smtp-frontend" {
                assert_eq!(
                    r["sources"]["<anyone>"],
                    serde_json::json!(["2465", "2525", "2587"]),
                    "{o}: the world reaches the SMTP ports, and only those: {r:#}"
                );
            } else {
                assert!(outside.is_empty(), "{o}: {w} is open to {outside:?}");
            }
        }
        assert_eq!(sources(&f, "redis"), ["sasl-auth", "smtp-frontend"], "{o}");
        assert_eq!(sources(&f, "sasl-auth"), ["smtp-frontend"], "{o}");
        assert_eq!(
            sources(&f, "relay-queue"),
            ["authrelay-admin", "smtp-frontend"],
            "{o}"
        );
        if o != "dev" {
            assert_eq!(sources(&f, "postgres"), ["credential-store"], "{o}");
        }
    }
}

#[test]
fn frontend_service_keeps_the_client_address_with_external_traffic_policy_local() {
    for o in OVERLAYS {
        let f = facts(o);
        let s = &f["services"]["smtp-frontend"];
        assert_eq!(s["type"], "LoadBalancer", "{o}: {s}");
        assert_eq!(s["externalTrafficPolicy"], "Local", "{o}: {s}");
        assert_eq!(s["ports"], serde_json::json!([25, 587, 465]), "{o}: {s}");
        assert_eq!(s["selects"], serde_json::json!(["smtp-frontend"]), "{o}");
    }
}

#[test]
fn sasl_auth_service_is_headless_and_every_endpoint_names_a_headless_service() {
    for o in OVERLAYS {
        let f = facts(o);
        let s = &f["services"]["sasl-auth-headless"];
        assert_eq!(s["clusterIP"], "None", "{o}: {s}");
        assert_eq!(s["selects"], serde_json::json!(["sasl-auth"]), "{o}");
        for (name, target) in [
            ("sasl_auth", "sasl-auth"),
            ("credential_store", "credential-store"),
            ("relay_queue", "relay-queue"),
            ("frontend", "smtp-frontend"),
        ] {
            let eps = f["endpoints"][name].as_array().unwrap();
            assert!(!eps.is_empty(), "{o}: endpoints.{name} empty");
            for e in eps {
                assert_eq!(e["headless"], true, "{o}: endpoints.{name}: {e}");
                assert_eq!(e["port_served"], true, "{o}: endpoints.{name}: {e}");
                assert_eq!(e["selects"], serde_json::json!([target]), "{o}: {e}");
            }
        }
    }
}

#[test]
fn frontend_grace_period_covers_prestop_and_drain_grace() {
    for o in OVERLAYS {
        let f = facts(o);
        let fe = &f["frontend"];
        let grace = fe["terminationGracePeriodSeconds"].as_f64().unwrap();
        let pre = fe["preStopSleepSeconds"].as_f64().unwrap();
        let drain = fe["drainGraceSeconds"].as_f64().unwrap();
        assert!(drain > 0.0, "{o}: {fe}");
        assert!(pre > 0.0, "{o}: no preStop pause before the drain: {fe}");
        assert!(
            grace >= pre + drain,
            "{o}: terminationGracePeriodSeconds {grace} < preStop {pre} + drain_grace {drain}"
        );
        // Readiness is the frontend's own grpc.health.v1 on admin_listen.
        let port = fe["adminListen"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let probe_port = fe["readinessProbe"]["grpc"]["port"].as_u64().unwrap();
        if o == "prod-mtls" {
            assert_eq!(probe_port, 7349, "mTLS: probes use the plain health port");
        } else {
            assert_eq!(probe_port, port, "{o}: {fe}");
        }
    }
}

#[test]
fn prod_scales_frontends_and_sasl_auth_with_budgets_spread_and_a_spool_per_queue_replica() {
    let f = facts("prod");
    assert_eq!(f["namespaces"], serde_json::json!(["authrelay"]));
    assert_eq!(f["hpa"]["smtp-frontend"]["min"], 3);
    assert_eq!(f["hpa"]["sasl-auth"]["min"], 2);
    for w in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "relay-queue",
    ] {
        assert_eq!(f["pdb"][w], serde_json::json!([w]), "PDB {w}");
        assert_eq!(
            f["workloads"][w]["topologySpread"],
            serde_json::json!(["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
            "{w}"
        );
    }
    let q = &f["workloads"]["relay-queue"];
    assert_eq!(q["kind"], "StatefulSet");
    assert_eq!(q["volumeClaimTemplates"], serde_json::json!(["spool"]));
    assert!(q["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        f["workloads"]["smtp-frontend"]["images"],
        serde_json::json!(["registry.example.com/authrelay:0.1.0"])
    );
    let dev = facts("dev");
    assert_eq!(dev["namespaces"], serde_json::json!(["authrelay"]));
    assert!(dev["hpa"].as_object().unwrap().is_empty());
    assert!(
        dev["workloads"].get("postgres").is_none(),
        "dev embeds the credential DB"
    );
    for (w, v) in dev["workloads"].as_object().unwrap() {
        assert_eq!(v["replicas"], 1, "dev runs one {w}");
    }
}

#[test]
fn every_pod_passes_authrelay_config_check_with_what_its_manifest_mounts() {
    let authrelay = bin("authrelay").display().to_string();
    // prod-mtls adds internal_tls.* and https:// endpoints: each pod's
    // certificate Secret must be mounted where the variables point.
    for (o, backend) in [
        ("dev", "file"),
        ("prod", "postgres"),
        ("prod-mtls", "postgres"),
    ] {
        let (_, results) = check(&["config-check", &overlay(o), "--authrelay", &authrelay]);
        let results = results.as_array().unwrap();
        let mut checked: Vec<&str> = results
            .iter()
            .map(|r| r["workload"].as_str().unwrap())
            .collect();
        checked.sort();
        assert_eq!(
            checked,
            [
                "authrelay-admin",
                "credential-store",
                "relay-queue",
                "sasl-auth",
                "smtp-frontend"
            ],
            "{o}"
        );
        for r in results {
            assert_eq!(r["ok"], true, "{o}: {}: {r:#}", r["workload"]);
        }
        let cs = results
            .iter()
            .find(|r| r["workload"] == "credential-store")
            .unwrap();
        assert!(
            cs["effective"]
                .as_str()
                .unwrap()
                .contains(&format!("backend = \"{backend}\"")),
            "{o}: credential-store runs the {backend} backend"
        );
    }
}

#[test]
fn dockerfile_builds_from_the_lock_file_into_a_non_root_image_without_a_shell() {
    let (_, d) = check(&[
        "dockerfile",
        &repo().join("Dockerfile").display().to_string(),
    ]);
    let stages = d["stages"].as_array().unwrap();
    assert!(stages.len() >= 2, "multi-stage: {d:#}");
    let builder = &stages[0];
    assert!(
        builder["from"].as_str().unwrap().starts_with("rust:"),
        "{builder}"
    );
    let run = builder["run"].to_string();
    assert!(run.contains("cargo build --release --locked"), "{run}");
    let runtime = stages.last().unwrap();
    assert!(
        runtime["from"]
            .as_str()
            .unwrap()
            .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "{runtime}"
    );
    assert_eq!(
        runtime["run"],
        serde_json::json!([]),
        "no RUN: the runtime has no shell"
    );
    let user = runtime["user"].as_str().unwrap_or("");
    assert!(
        !user.is_empty() && !user.starts_with("root") && !user.starts_with('0'),
        "{runtime}"
    );
    assert_eq!(runtime["copy_from"][0]["from"], "builder");
    for b in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "relay-queue",
        "authrelay",
    ] {
        assert!(run.contains(b), "the builder installs {b}: {run}");
    }
    // Every command the manifests run exists in the image.
    let out = std::fs::read_to_string(repo().join("k8s/base/admin.yaml")).unwrap();
    assert!(out.contains("/usr/local/bin/sleep") && run.contains("/out/sleep"));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}
