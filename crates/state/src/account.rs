//! Per-account sending limits, counted in the shared store.
//!
//! Each limit is a window (an hour, a day) with an approximated sliding
//! count: two fixed buckets, the current one and the previous one, the
//! previous weighted by how much of it still lies inside the window
//! (`current + previous × (1 − elapsed/window)`). That is two integers per
//! window and account instead of one sorted-set member per message (a day
//! of recipients would be thousands), and unlike a plain fixed window it
//! does not let an account send twice its limit across a bucket boundary.
//!
//! Two counts per window: *accepted* (what the soft limit is checked
//! against — a refused attempt is not counted there, so a client that backs
//! off gets its quota back as the window slides) and *attempts* (every
//! MAIL or RCPT, refused or not — what the hard threshold is checked
//! against: a spammer hammering past the soft limit reaches it, a client
//! that respects 4xx does not).
//!
//! The decision ([`decide`]) is pure and unit-tested; the in-process store
//! runs it under its lock, and Redis runs the same arithmetic in one Lua
//! script ([`COUNT_SCRIPT`]), so a MAIL or RCPT costs one atomic round trip
//! whatever the number of frontends.

use std::time::Duration;

/// One limit of a count request: its name (`messages_per_hour` …), its
/// window and the configured value (an override in the store wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowLimit {
    pub name: String,
    pub window: Duration,
    /// 0 = no limit.
    pub limit: u64,
}

/// Count `amount` events of one kind for `account` against `windows`.
#[derive(Clone, Debug)]
pub struct CountRequest<'a> {
    pub account: &'a str,
    pub windows: &'a [WindowLimit],
    pub amount: u64,
    /// Hard threshold = factor × limit, on attempts; 0 = never suspend.
    pub suspend_factor: u64,
    /// Recorded with a suspension (client address, frontend instance).
    pub relay: &'a str,
}

/// What the store said about one count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountOutcome {
    /// Within every limit: counted.
    Accepted,
    /// Over the soft limit of `limit` (`count` already used of `max`):
    /// only the attempt was counted.
    Refused { limit: String, count: u64, max: u64 },
    /// This attempt crossed the hard threshold: the account is now
    /// suspended (recorded in the store).
    SuspendedNow {
        limit: String,
        attempts: u64,
        threshold: u64,
    },
    /// The account was suspended before: nothing counted.
    Suspended,
}

/// The counts of one window as read from the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Accepted events, sliding estimate.
    pub accepted: u64,
    /// Attempts, sliding estimate.
    pub attempts: u64,
    /// The effective limit (override or configured); 0 = none.
    pub limit: u64,
}

/// The decision for `amount` more events, given each window's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Index of the first window whose soft limit would be passed.
    Refuse(usize),
    /// Index of the first window whose hard threshold would be passed.
    Suspend(usize),
}

/// The hard threshold of a window: `factor × limit`, or none.
pub fn threshold(limit: u64, factor: u64) -> Option<u64> {
    (limit > 0 && factor > 0).then(|| limit.saturating_mul(factor))
}

/// Suspension wins over refusal; the first window that says so names it.
pub fn decide(counts: &[WindowCounts], amount: u64, factor: u64) -> Decision {
    if let Some(i) = counts.iter().position(|c| {
        threshold(c.limit, factor).is_some_and(|t| c.attempts.saturating_add(amount) > t)
    }) {
        return Decision::Suspend(i);
    }
    match counts
        .iter()
        .position(|c| c.limit > 0 && c.accepted.saturating_add(amount) > c.limit)
    {
        Some(i) => Decision::Refuse(i),
        None => Decision::Accept,
    }
}

/// The fixed bucket `now_ms` falls in, and the weight of the previous
/// bucket in the sliding estimate (the part of it still in the window).
pub fn bucket(now_ms: u64, window: Duration) -> (u64, f64) {
    let w = window.as_millis().max(1) as u64;
    let elapsed = now_ms % w;
    (now_ms / w, 1.0 - elapsed as f64 / w as f64)
}

/// `current + previous × weight`, rounded up (as the Lua script does): the
/// estimate never undercounts, so a limit is never passed by rounding — and
/// at a bucket boundary (weight just under 1) nothing is lost.
pub fn estimate(current: u64, previous: u64, weight: f64) -> u64 {
    current.saturating_add((previous as f64 * weight).ceil() as u64)
}

/// Store keys (without the deployment prefix).
pub mod keys {
    /// Hash: account → suspension record (JSON).
    pub const SUSPENDED: &str = "lim:suspended";
    /// Channel: `suspend\0ACCOUNT` / `unlock\0ACCOUNT` to every frontend.
    pub const EVENTS: &str = "lim:events";

    /// Hash of an account's overrides: limit name → value.
    pub fn overrides(account: &str) -> String {
        format!("lim:override:{account}")
    }

    /// Counter of accepted events (`acc`) or attempts (`att`) of one bucket.
    pub fn counter(kind: &str, account: &str, limit: &str, bucket: u64) -> String {
        format!("lim:{kind}:{account}:{limit}:{bucket}")
    }

    /// Every counter key that can hold a count at `now_ms` (for unlock,
    /// which starts the account afresh, and for showing usage).
    pub fn live_counters(
        account: &str,
        windows: &[super::WindowLimit],
        now_ms: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for w in windows {
            let (b, _) = super::bucket(now_ms, w.window);
            for kind in ["acc", "att"] {
                out.push(counter(kind, account, &w.name, b));
                out.push(counter(kind, account, &w.name, b.saturating_sub(1)));
            }
        }
        out
    }
}

/// The count in one round trip. KEYS: the suspension hash, the override
/// hash, then per window the accepted counter of the current and previous
/// bucket and the attempt counter of the current and previous bucket.
/// ARGV: account, amount, factor, suspension record fields (since, relay),
/// then per window its name, configured limit, previous-bucket weight and
/// counter lifetime (ms). Returns {status, window index (1-based), count,
/// limit}: status 0 accepted, 1 refused, 2 suspended now, 3 suspended before.
/// Mirrors [`decide`]: suspension first, then the soft limit.
pub const COUNT_SCRIPT: &str = r#"
local account = ARGV[1]
if redis.call('HEXISTS', KEYS[1], account) == 1 then return {3, 0, 0, 0} end
local amount = tonumber(ARGV[2])
local factor = tonumber(ARGV[3])
local nw = (#KEYS - 2) / 4
local acc, att, lim = {}, {}, {}
local suspend, refuse = 0, 0
for i = 1, nw do
  local a = 5 + (i - 1) * 4
  local k = 2 + (i - 1) * 4
  local weight = tonumber(ARGV[a + 3])
  local o = redis.call('HGET', KEYS[2], ARGV[a + 1])
  local limit = tonumber(o or ARGV[a + 2])
  local function est(cur, prev)
    return tonumber(redis.call('GET', KEYS[cur]) or '0') + math.ceil(tonumber(redis.call('GET', KEYS[prev]) or '0') * weight)
  end
  acc[i] = est(k + 1, k + 2)
  att[i] = est(k + 3, k + 4)
  lim[i] = limit
  if limit > 0 and factor > 0 and suspend == 0 and att[i] + amount > limit * factor then suspend = i end
  if limit > 0 and refuse == 0 and acc[i] + amount > limit then refuse = i end
end
for i = 1, nw do
  local a = 5 + (i - 1) * 4
  local k = 2 + (i - 1) * 4
  local ttl = ARGV[a + 4]
  redis.call('INCRBY', KEYS[k + 3], amount)
  redis.call('PEXPIRE', KEYS[k + 3], ttl)
  if suspend == 0 and refuse == 0 then
    redis.call('INCRBY', KEYS[k + 1], amount)
    redis.call('PEXPIRE', KEYS[k + 1], ttl)
  end
end
if suspend > 0 then
  local record = cjson.encode({since = tonumber(ARGV[4]), relay = ARGV[5], limit = ARGV[5 + (suspend - 1) * 4 + 1], attempts = att[suspend] + amount, threshold = lim[suspend] * factor})
  redis.call('HSET', KEYS[1], account, record)
  return {2, suspend, att[suspend] + amount, lim[suspend] * factor}
end
if refuse > 0 then return {1, refuse, acc[refuse], lim[refuse]} end
return {0, 0, 0, 0}
"#;

/// Why an account is suspended, as kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    /// Seconds since the Unix epoch.
    pub since: i64,
    /// Client address and frontend of the attempt that crossed the threshold.
    pub relay: String,
    pub limit: String,
    pub attempts: u64,
    pub threshold: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(accepted: u64, attempts: u64, limit: u64) -> WindowCounts {
        WindowCounts {
            accepted,
            attempts,
            limit,
        }
    }

    #[test]
    fn within_every_limit_is_accepted() {
        assert_eq!(
            decide(&[c(9, 9, 10), c(99, 99, 100)], 1, 3),
            Decision::Accept
        );
    }

    #[test]
    fn the_event_past_a_soft_limit_is_refused_naming_that_window() {
        assert_eq!(
            decide(&[c(10, 10, 10), c(10, 10, 100)], 1, 3),
            Decision::Refuse(0)
        );
        assert_eq!(
            decide(&[c(5, 5, 10), c(100, 100, 100)], 1, 3),
            Decision::Refuse(1)
        );
    }

    #[test]
    fn several_recipients_at_once_count_as_their_number() {
        assert_eq!(decide(&[c(8, 8, 10)], 2, 3), Decision::Accept);
        assert_eq!(decide(&[c(8, 8, 10)], 3, 3), Decision::Refuse(0));
    }

    #[test]
    fn attempts_past_factor_times_the_limit_suspend() {
        // 30 attempts (10 accepted, 20 refused) against 10 × 3: the 31st suspends.
        assert_eq!(decide(&[c(10, 29, 10)], 1, 3), Decision::Refuse(0));
        assert_eq!(decide(&[c(10, 30, 10)], 1, 3), Decision::Suspend(0));
    }

    #[test]
    fn factor_zero_never_suspends() {
        assert_eq!(decide(&[c(10, 1_000_000, 10)], 1, 0), Decision::Refuse(0));
        assert_eq!(threshold(10, 0), None);
    }

    #[test]
    fn a_zero_limit_is_no_limit() {
        assert_eq!(
            decide(&[c(1_000_000, 1_000_000, 0)], 1, 3),
            Decision::Accept
        );
        assert_eq!(threshold(0, 3), None);
    }

    #[test]
    fn the_previous_bucket_fades_out_as_the_window_slides() {
        let hour = Duration::from_secs(3600);
        let (b, w) = bucket(7200 * 1000, hour);
        assert_eq!((b, w), (2, 1.0));
        let (b, w) = bucket(7200 * 1000 + 900 * 1000, hour);
        assert_eq!(b, 2);
        assert!((w - 0.75).abs() < 1e-9);
        // 100 in the previous hour, a quarter of this one gone: 75 still count.
        assert_eq!(estimate(10, 100, w), 85);
        assert_eq!(estimate(0, 3, 0.5), 2);
        // Just past a boundary the previous bucket still counts whole.
        assert_eq!(estimate(0, 3, 0.999_999), 3);
        assert_eq!(estimate(0, 0, 0.5), 0);
    }

    #[test]
    fn unlock_clears_both_buckets_of_both_counts() {
        let windows = [WindowLimit {
            name: "messages_per_hour".into(),
            window: Duration::from_secs(3600),
            limit: 10,
        }];
        let keys = keys::live_counters("a@r", &windows, 3600 * 1000 * 5 + 1);
        assert_eq!(
            keys,
            [
                "lim:acc:a@r:messages_per_hour:5",
                "lim:acc:a@r:messages_per_hour:4",
                "lim:att:a@r:messages_per_hour:5",
                "lim:att:a@r:messages_per_hour:4",
            ]
        );
    }
}
