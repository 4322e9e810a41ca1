//! The same behaviour tests run against the in-process store and a real
//! Redis (REDIS_URL, default redis://127.0.0.1:6379). A missing Redis fails
//! the test with instructions, never a silent skip.

use super::*;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

async fn stores() -> Vec<SharedState> {
    let prefix = format!("authrelay-test:{}:{}:", std::process::id(), unique_suffix());
    let redis = SharedState::redis(&redis_url(), &prefix, Duration::from_secs(2)).unwrap();
    redis.ping().await.unwrap_or_else(|e| {
        panic!(
            "these tests need a Redis at {} ({e}); run `scripts/test.sh`, which starts one, \
             or set REDIS_URL",
            redis_url()
        )
    });
    vec![SharedState::in_process(), redis]
}

#[tokio::test]
async fn put_and_get() {
    for s in stores().await {
        s.put("k", b"v", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            s.get("k").await.unwrap().as_deref(),
            Some(&b"v"[..]),
            "{}",
            s.kind()
        );
        assert_eq!(s.get("absent").await.unwrap(), None, "{}", s.kind());
    }
}

#[tokio::test]
async fn values_expire() {
    for s in stores().await {
        s.put("e", b"v", Duration::from_millis(50)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(s.get("e").await.unwrap(), None, "{}", s.kind());
    }
}

#[tokio::test]
async fn claim_is_single_use() {
    for s in stores().await {
        assert!(s.claim("nonce:1", Duration::from_secs(10)).await.unwrap());
        assert!(
            !s.claim("nonce:1", Duration::from_secs(10)).await.unwrap(),
            "{}",
            s.kind()
        );
    }
}

#[tokio::test]
async fn sliding_window_counts_and_forgets() {
    for s in stores().await {
        let w = Duration::from_millis(300);
        assert_eq!(s.record_event("f", w).await.unwrap(), 1);
        assert_eq!(s.record_event("f", w).await.unwrap(), 2);
        assert_eq!(s.count_events("f", w).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.count_events("f", w).await.unwrap(), 0, "{}", s.kind());
    }
}

#[tokio::test]
async fn keys_lists_by_prefix() {
    for s in stores().await {
        s.put("session:a", b"1", Duration::from_secs(10))
            .await
            .unwrap();
        s.put("session:b", b"2", Duration::from_secs(10))
            .await
            .unwrap();
        s.put("other", b"3", Duration::from_secs(10)).await.unwrap();
        let mut k = s.keys("session:").await.unwrap();
        k.sort();
        assert_eq!(k, ["session:a", "session:b"], "{}", s.kind());
    }
}

#[tokio::test]
async fn unreachable_redis_is_unavailable_quickly() {
    // Port 1 on loopback: connection refused.
    let s = SharedState::redis("redis://127.0.0.1:1/", "x:", Duration::from_millis(300)).unwrap();
    let started = std::time::Instant::now();
    let err = s.get("k").await.unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn lists_push_and_drain_once() {
    for s in stores().await {
        s.push("q", b"a", Duration::from_secs(10)).await.unwrap();
        s.push("q", b"b", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            s.drain("q").await.unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()],
            "{}",
            s.kind()
        );
        assert!(s.drain("q").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn counts_and_claim_in_one_round_trip() {
    for s in stores().await {
        let w = Duration::from_secs(30);
        s.record_event("ip", w).await.unwrap();
        s.record_event("ip", w).await.unwrap();
        s.record_event("user", w).await.unwrap();
        let claim = Some(("x", Duration::from_secs(10)));
        let (counts, claimed) = s
            .count_events_and_claim(&["ip", "user", "nobody"], w, claim)
            .await
            .unwrap();
        assert_eq!(counts, vec![2, 1, 0], "{}", s.kind());
        assert!(claimed, "{}", s.kind());
        let (_, again) = s.count_events_and_claim(&["ip"], w, claim).await.unwrap();
        assert!(!again, "a claim is single-use ({})", s.kind());
        // Counting records nothing.
        assert_eq!(s.count_events("ip", w).await.unwrap(), 2, "{}", s.kind());
        let (counts, claimed) = s.count_events_and_claim(&[], w, None).await.unwrap();
        assert!(counts.is_empty() && claimed);
    }
}

#[tokio::test]
async fn a_published_message_reaches_every_subscriber() {
    for s in stores().await {
        let mut a = s.subscribe("feed").await.unwrap();
        let mut b = s.subscribe("feed").await.unwrap();
        let mut other = s.subscribe("other").await.unwrap();
        s.publish("feed", b"user changed").await.unwrap();
        for sub in [&mut a, &mut b] {
            let got = tokio::time::timeout(Duration::from_secs(2), sub.next())
                .await
                .expect("delivered within 2 s");
            assert_eq!(got.as_deref(), Some(&b"user changed"[..]), "{}", s.kind());
        }
        let nothing = tokio::time::timeout(Duration::from_millis(100), other.next()).await;
        assert!(
            nothing.is_err(),
            "another channel hears nothing ({})",
            s.kind()
        );
    }
}

fn hourly(name: &str, limit: u64) -> account::WindowLimit {
    account::WindowLimit {
        name: name.into(),
        window: Duration::from_secs(3600),
        limit,
    }
}

async fn count(
    s: &SharedState,
    acct: &str,
    w: &[account::WindowLimit],
    n: u64,
) -> account::CountOutcome {
    s.count_account(&account::CountRequest {
        account: acct,
        windows: w,
        amount: n,
        suspend_factor: 3,
        relay: "[192.0.2.1] fe-1",
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn account_counts_refuse_past_the_limit_then_suspend_at_the_threshold() {
    use account::CountOutcome::*;
    for s in stores().await {
        let w = [
            hourly("messages_per_hour", 2),
            hourly("messages_per_day", 100),
        ];
        assert_eq!(count(&s, "a@r", &w, 1).await, Accepted, "{}", s.kind());
        assert_eq!(count(&s, "a@r", &w, 1).await, Accepted, "{}", s.kind());
        // Attempts 3..=6 are refused (only attempts counted); the 7th passes 2 × 3.
        for _ in 3..=6 {
            assert_eq!(
                count(&s, "a@r", &w, 1).await,
                Refused {
                    limit: "messages_per_hour".into(),
                    count: 2,
                    max: 2
                },
                "{}",
                s.kind()
            );
        }
        assert_eq!(
            count(&s, "a@r", &w, 1).await,
            SuspendedNow {
                limit: "messages_per_hour".into(),
                attempts: 7,
                threshold: 6
            },
            "{}",
            s.kind()
        );
        assert_eq!(count(&s, "a@r", &w, 1).await, Suspended, "{}", s.kind());
        let susp = s.suspension("a@r").await.unwrap().expect("suspended");
        assert_eq!(susp.limit, "messages_per_hour");
        assert_eq!((susp.attempts, susp.threshold), (7, 6));
        assert_eq!(susp.relay, "[192.0.2.1] fe-1");
        assert!(susp.since > 0);
        assert_eq!(s.suspensions().await.unwrap().len(), 1, "{}", s.kind());
        // Another account is untouched.
        assert_eq!(count(&s, "b@r", &w, 1).await, Accepted, "{}", s.kind());
        // Unlock lifts it and starts afresh.
        let counters = account::keys::live_counters("a@r", &w, SharedState::now_ms());
        assert!(s.unlock_account("a@r", &counters).await.unwrap());
        assert!(!s.unlock_account("a@r", &counters).await.unwrap());
        assert_eq!(s.suspension("a@r").await.unwrap(), None);
        let usage = s.account_usage("a@r", &w).await.unwrap();
        assert_eq!(usage[0].accepted + usage[0].attempts, 0, "{}", s.kind());
        assert_eq!(count(&s, "a@r", &w, 1).await, Accepted, "{}", s.kind());
    }
}

#[tokio::test]
async fn account_overrides_win_over_the_configured_limit() {
    use account::CountOutcome::*;
    for s in stores().await {
        let w = [hourly("recipients_per_hour", 1)];
        s.set_account_overrides("o@r", &[("recipients_per_hour".into(), 3)], &[], false)
            .await
            .unwrap();
        assert_eq!(
            s.account_overrides("o@r")
                .await
                .unwrap()
                .get("recipients_per_hour"),
            Some(&3)
        );
        assert_eq!(count(&s, "o@r", &w, 2).await, Accepted, "{}", s.kind());
        assert_eq!(count(&s, "o@r", &w, 1).await, Accepted, "{}", s.kind());
        assert!(
            matches!(count(&s, "o@r", &w, 1).await, Refused { max: 3, .. }),
            "{}",
            s.kind()
        );
        let usage = s.account_usage("o@r", &w).await.unwrap();
        assert_eq!(
            (usage[0].accepted, usage[0].attempts, usage[0].limit),
            (3, 4, 3)
        );
        s.set_account_overrides("o@r", &[], &[], true)
            .await
            .unwrap();
        assert!(
            s.account_overrides("o@r").await.unwrap().is_empty(),
            "{}",
            s.kind()
        );
    }
}

#[test]
fn redis_auth_debug_never_shows_the_password() {
    let auth = RedisAuth {
        username: Some("authrelay".into()),
        password: Some("hunter2-never-shown".into()),
    };
    let shown = format!("{auth:?}");
    assert!(shown.contains("authrelay"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
