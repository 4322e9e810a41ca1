//! Brute-force defence shared through Redis by every frontend and sasl-auth:
//! failures spread over two frontends trip one limit; past it, 454 4.7.0
//! after the configured delay, logged once per window; a clean address still
//! logs in, unslowed. And no user enumeration by timing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use base64::Engine as _;

const PASSWORD: &str = "tanstaaf-Secret-42";
const WRONG: &str = "not-the-password";
const BLOCK_DELAY: Duration = Duration::from_secs(2);

/// Plain-text AUTH is allowed without TLS here so the attempts are short
/// raw exchanges; what is under test is the counting, not TLS.
fn stack(name: &str, limits: &str) -> (std::path::PathBuf, Redis, Stack) {
    stack_with(name, "", limits)
}

/// As [`stack`], with more keys of `[sasl]`.
fn stack_with(name: &str, sasl: &str, limits: &str) -> (std::path::PathBuf, Redis, Stack) {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: format!(
                "[sasl]\nallow_plaintext_without_tls = true\n{sasl}\n\n[sasl.limits]\n{limits}\n"
            ),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    (dir, redis, stack)
}

/// One AUTH PLAIN on a fresh connection from `source` (a loopback address);
/// returns the reply and how long the AUTH command took.
fn attempt(
    frontend: SocketAddr,
    source: &str,
    user: &str,
    password: &str,
) -> (u16, String, Duration) {
    let (mut c, code, text) = Raw::connect_from(source, frontend)
        .unwrap_or_else(|| panic!("cannot connect from {source} to {frontend}"));
    assert_eq!(code, 220, "{text}");
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    let ir = b64(format!("\0{user}\0{password}").as_bytes());
    let started = Instant::now();
    let (code, text) = c.cmd(&format!("AUTH PLAIN {ir}"));
    let took = started.elapsed();
    c.send("QUIT");
    (code, text, took)
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn failures_over_two_frontends_trip_the_shared_user_limit_but_a_clean_address_still_logs_in() {
    let (_dir, _redis, stack) = stack(
        "bf-user",
        "window = \"60s\"\nmax_failures_per_ip = 100\nmax_failures_per_user = 4\nblock_delay = \"2s\"",
    );
    let (frontend_b, b, _) = stack.spawn_frontend("smtp-frontend-b");
    let a = stack.submission;
    let user = "test@mailserver.foo.com";

    // Four wrong guesses, alternating frontends, all from 127.0.0.1.
    for i in 0..4 {
        let via = if i % 2 == 0 { a } else { b };
        let (code, text, _) = attempt(via, "127.0.0.1", user, WRONG);
        assert_eq!(code, 535, "guess {i}: {text}");
    }
    // The shared limit is reached: the guessing address is refused on either
    // frontend, even with the right password, temporarily and slowly.
    for via in [a, b] {
        let (code, text, took) = attempt(via, "127.0.0.1", user, PASSWORD);
        assert_eq!(code, 454, "{text}");
        assert!(text.contains("4.7.0"), "{text}");
        assert!(took >= BLOCK_DELAY, "blocked answer came after {took:?}");
    }
    // A clean address logs in, and is not slowed down.
    let (code, text, took) = attempt(b, "127.0.0.2", user, PASSWORD);
    assert_eq!(code, 235, "{text}");
    assert!(took < BLOCK_DELAY, "a success took {took:?}");
    // Another address gets one real guess, then it is blocked too.
    let (code, text, _) = attempt(a, "127.0.0.3", user, WRONG);
    assert_eq!(code, 535, "{text}");
    let (code, text, _) = attempt(b, "127.0.0.3", user, WRONG);
    assert_eq!(code, 454, "{text}");

    // Logged once per window, however many attempts were refused.
    let sasl_log = stack.sasl.log_text();
    assert_eq!(
        count(
            &sasl_log,
            "AUTH blocked: too many failures for user test@mailserver.foo.com within 60s"
        ),
        1,
        "{sasl_log}"
    );
    // Each refusal is still one AUTH failure line, on the frontend it hit.
    let fe_logs = format!("{}\n{}", stack.frontend.log_text(), frontend_b.log_text());
    assert_eq!(
        count(
            &fe_logs,
            "AUTH failure (PLAIN): too many authentication failures"
        ),
        3,
        "{fe_logs}"
    );
    assert!(!fe_logs.contains(WRONG) && !sasl_log.contains(WRONG));

    // The operator sees the limits.
    let (ok, out, err) = stack.authrelay(&["config", "check"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "window 60s; max failures per client address 100; per user 4; delay when blocked 2000ms"
        ),
        "{out}"
    );
}

/// `sasl.limits.clean_ttl`: a PLAIN login whose counters Redis showed as
/// zero a moment ago skips its round trip; a failure ends that at once.
#[test]
fn a_clean_login_skips_its_redis_round_trip_until_a_failure() {
    let (_dir, redis, stack) = stack(
        "bf-clean",
        "window = \"60s\"\nmax_failures_per_ip = 2\nmax_failures_per_user = 0\nblock_delay = \"1s\"\nclean_ttl = \"1h\"",
    );
    let a = stack.submission;
    let user = "test@mailserver.foo.com";
    // Each read of the counters is one ZCARD; so is each failure recorded.
    let reads = |f: &mut dyn FnMut()| {
        let before = redis.calls("zcard");
        f();
        redis.calls("zcard") - before
    };
    let login = |password: &str, want: u16| {
        let (code, text, _) = attempt(a, "127.0.0.4", user, password);
        assert_eq!(code, want, "{text}");
    };
    assert_eq!(
        reads(&mut || login(PASSWORD, 235)),
        1,
        "the first login reads"
    );
    assert_eq!(
        reads(&mut || (0..5).for_each(|_| login(PASSWORD, 235))),
        0,
        "the next five trust the zero they saw"
    );
    // A wrong password: answered 535, counted, the zero forgotten, and the
    // read the check skipped made before the answer: a failure costs the
    // same reads (and so the same time) whether the zero was trusted or not.
    let trusted_failure = reads(&mut || login(WRONG, 535));
    assert_eq!(reads(&mut || login(PASSWORD, 235)), 1, "read again");
    // A count of one is never trusted: the next failure reaches the limit
    // and the right password is then refused.
    let read_failure = reads(&mut || login(WRONG, 535));
    assert_eq!(trusted_failure, read_failure);
    assert_eq!(read_failure, 3, "one read, two failures recorded");
    login(PASSWORD, 454);
}

/// `sasl.exchange_claims`: by default a replica records the challenge it
/// answered in its own memory, so a CRAM-MD5 or DIGEST-MD5 login with
/// trusted counters makes no Redis round trip at all, and a replayed step is
/// still refused (`sasl_interop.rs`). With `shared`, each such login claims
/// its state in Redis, and the counts ride along.
#[test]
fn a_challenge_login_with_trusted_counters_makes_no_redis_round_trip_unless_claims_are_shared() {
    use authrelay_sasl::Mechanism;
    // ZCARDs a login makes: none, or the address's and the user's counts
    // read with the claim.
    for (claims, per_login) in [("replica", 0), ("shared", 2)] {
        let (_dir, redis, stack) = stack_with(
            &format!("bf-claims-{claims}"),
            &format!("exchange_claims = \"{claims}\""),
            "max_failures_per_ip = 5\nmax_failures_per_user = 5\nclean_ttl = \"1h\"",
        );
        let round_trips = || redis.calls("zcard");
        let login = |mech| {
            let (mut c, code, text) =
                Raw::connect_from("127.0.0.5", stack.submission).expect("connect");
            assert_eq!(code, 220, "{text}");
            assert_eq!(c.cmd("EHLO client.example").0, 250);
            let code = auth_raw(&mut c, mech, "test@mailserver.foo.com", PASSWORD);
            c.send("QUIT");
            code
        };
        for mech in [Mechanism::CramMd5, Mechanism::DigestMd5] {
            assert_eq!(login(mech), 235, "{claims}: first {mech}");
        }
        let before = round_trips();
        for _ in 0..3 {
            for mech in [Mechanism::CramMd5, Mechanism::DigestMd5] {
                assert_eq!(login(mech), 235, "{claims}: {mech}");
            }
        }
        assert_eq!(
            round_trips() - before,
            6 * per_login,
            "{claims}: counter reads for six challenge logins with trusted counters"
        );
        assert_eq!(
            redis
                .keys()
                .iter()
                .filter(|k| k.contains("sasl:used:"))
                .count(),
            if claims == "shared" { 8 } else { 0 },
            "{claims}: claims kept in Redis"
        );
    }
}

#[test]
fn failures_from_one_address_over_two_frontends_trip_the_per_address_limit() {
    let (_dir, _redis, stack) = stack(
        "bf-ip",
        "window = \"60s\"\nmax_failures_per_ip = 3\nmax_failures_per_user = 0\nblock_delay = \"2s\"",
    );
    let (_frontend_b, b, _) = stack.spawn_frontend("smtp-frontend-b");
    let a = stack.submission;
    // Spraying different (unknown) users does not escape the address limit.
    for i in 0..3 {
        let via = if i % 2 == 0 { a } else { b };
        let (code, text, _) = attempt(via, "127.0.0.1", &format!("u{i}@mailserver.foo.com"), WRONG);
        assert_eq!(code, 535, "{text}");
    }
    let (code, text, took) = attempt(b, "127.0.0.1", "test@mailserver.foo.com", PASSWORD);
    assert_eq!(code, 454, "{text}");
    assert!(took >= BLOCK_DELAY, "{took:?}");
    // A challenge mechanism is refused as well, before anything is
    // verified: the challenge costs no Redis (its state is sealed), and the
    // address count rides in the one pipeline of the answering step.
    let (mut c, code, text) = Raw::connect_from("127.0.0.1", a).expect("connect");
    assert_eq!(code, 220, "{text}");
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    let (code, text) = c.cmd("AUTH CRAM-MD5");
    assert_eq!(code, 334, "{text}");
    let started = std::time::Instant::now();
    let answer = base64::engine::general_purpose::STANDARD
        .encode("test@mailserver.foo.com 0123456789abcdef0123456789abcdef");
    let (code, text) = c.cmd(&answer);
    assert_eq!(code, 454, "a blocked address answering a challenge: {text}");
    assert!(started.elapsed() >= BLOCK_DELAY, "{:?}", started.elapsed());
    c.send("QUIT");
    let (code, text, took) = attempt(a, "127.0.0.2", "test@mailserver.foo.com", PASSWORD);
    assert_eq!(code, 235, "{text}");
    assert!(took < BLOCK_DELAY, "{took:?}");
    // A clean address still gets its CRAM-MD5 challenge.
    let (mut c, _, _) = Raw::connect_from("127.0.0.2", a).expect("connect");
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    let (code, text) = c.cmd("AUTH CRAM-MD5");
    assert_eq!(code, 334, "{text}");
    c.send("*");
    let sasl_log = stack.sasl.log_text();
    assert_eq!(
        count(
            &sasl_log,
            "AUTH blocked: too many failures for client address 127.0.0.1"
        ),
        1,
        "{sasl_log}"
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// RFC 4954 §4 gives both the same 535; this checks they also take the same
/// time, so an attacker cannot list users by the clock: 30 interleaved pairs
/// of PLAIN attempts, medians within 25% or 10 ms.
#[test]
fn unknown_user_and_wrong_password_take_the_same_time_within_noise() {
    let (_dir, _redis, stack) = stack(
        "bf-timing",
        "max_failures_per_ip = 0\nmax_failures_per_user = 0",
    );
    let n = 30;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Warm both paths (connections, caches) before measuring.
    attempt(
        stack.submission,
        "127.0.0.1",
        "test@mailserver.foo.com",
        WRONG,
    );
    attempt(
        stack.submission,
        "127.0.0.1",
        "nobody@mailserver.foo.com",
        WRONG,
    );
    for i in 0..n {
        // Alternate which goes first, so a drift in load hits both alike.
        let order: [(&str, bool); 2] = if i % 2 == 0 {
            [("test", true), ("nobody", false)]
        } else {
            [("nobody", false), ("test", true)]
        };
        for (name, exists) in order {
            let (code, text, took) = attempt(
                stack.submission,
                "127.0.0.1",
                &format!("{name}@mailserver.foo.com"),
                WRONG,
            );
            assert_eq!(code, 535, "{text}");
            if exists {
                known.push(took)
            } else {
                unknown.push(took)
            }
        }
    }
    let (mk, mu) = (median(&mut known), median(&mut unknown));
    let diff = mk.abs_diff(mu);
    let bound = (mk.max(mu) / 4).max(Duration::from_millis(10));
    eprintln!(
        "PLAIN 535 timing over {n} interleaved pairs: wrong password median {:.1} ms \
         (min {:.1}, max {:.1}); unknown user median {:.1} ms (min {:.1}, max {:.1}); \
         difference {:.1} ms, bound {:.1} ms",
        ms(mk),
        ms(known[0]),
        ms(known[n - 1]),
        ms(mu),
        ms(unknown[0]),
        ms(unknown[n - 1]),
        ms(diff),
        ms(bound)
    );
    assert!(
        diff < bound,
        "unknown user {mu:?} vs wrong password {mk:?}: differ by {diff:?} (bound {bound:?})"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
