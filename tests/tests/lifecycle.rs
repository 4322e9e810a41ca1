//! Process lifecycle: a SIGTERM that reaches a service while it is still
//! starting (Kubernetes deleting a pod that has just begun, an operator's
//! Ctrl-C, a restart loop) is held until the service is up, which then stops
//! cleanly with exit status 0; and what it created meanwhile — above all the
//! credential database on its very first start — opens on the next start.
//!
//! Before the signal handlers were installed ahead of start-up, about one
//! credential-store in four TERMed right after it announced its port died
//! while redb was creating its file, and every later start failed with
//! "I/O error: invalid data".

use std::time::Duration;

use authrelay_e2e::*;

/// Spawn `service` with a fresh data directory and every port ephemeral,
/// wait for its announcement `needle`, send SIGTERM at once, and return
/// whether it exited with status 0 (and, for the message, how it ended and
/// its log).
fn term_right_after_announce(
    stack: &Stack,
    service: &str,
    key: &str,
    needle: &str,
    data: &std::path::Path,
) -> (bool, String) {
    let mut env = stack.endpoints.clone();
    env.push(("AUTHRELAY__DATA_DIR".into(), data.display().to_string()));
    if !key.is_empty() {
        env.push((format!("AUTHRELAY__{key}__LISTEN"), "127.0.0.1:0".into()));
    }
    let mut proc = spawn_service(service, &stack.config, data, &env);
    proc.wait_line(needle);
    proc.signal("TERM");
    let status = proc.wait_exit(Duration::from_secs(30));
    let how = format!("{status:?}; its log:\n{}", proc.log_text());
    (status.is_some_and(|s| s.success()), how)
}

#[test]
fn sigterm_during_start_up_stops_every_service_cleanly_and_it_starts_again() {
    let dir = scratch("lifecycle");
    let redis = Redis::start(&dir);
    let stack = Stack::start(&dir, &redis, StackOptions::default());
    let services = [
        ("credential-store", "CREDENTIAL_STORE", "(grpc)"),
        ("sasl-auth", "SASL_AUTH", "(grpc)"),
        ("relay-queue", "RELAY_QUEUE", "(grpc)"),
        ("smtp-frontend", "", "(smtp submission)"),
    ];
    for (service, key, needle) in services {
        for round in 0..8 {
            // A fresh directory each round: the first start creates the
            // credential database and the spool, the race this is about.
            let data = dir.join(format!("{service}-{round}"));
            std::fs::create_dir_all(&data).unwrap();
            let (clean, log) = term_right_after_announce(&stack, service, key, needle, &data);
            assert!(
                clean,
                "{service}, round {round}: SIGTERM during start-up did not stop it cleanly: {log}"
            );
            // The next start opens what the first one left.
            let (clean, log) = term_right_after_announce(&stack, service, key, needle, &data);
            assert!(
                clean,
                "{service}, round {round}: it did not start again on what it left: {log}"
            );
            if service == "credential-store" {
                assert!(data.join("credentials.redb").is_file());
                let leftovers: Vec<_> = std::fs::read_dir(&data)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("credentials.redb."))
                    .collect();
                assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
            }
        }
    }
}
