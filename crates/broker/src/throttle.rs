//! Replication throttles, Kafka's way: a reassignment's copying can be held to a byte rate
//! so that it does not crowd out producers and consumers.
//!
//! Which replicas are throttled is a topic config: `leader.replication.throttled.replicas`
//! on the leader's side, `follower.replication.throttled.replicas` on the follower's, each
//! a list of `partition:broker` pairs or `*` for all. The rates are dynamic broker configs
//! (`leader.replication.throttled.rate`, `follower.replication.throttled.rate`, bytes per
//! second, unlimited when unset), for one broker or as the cluster-wide default. Only
//! replicas outside the ISR are throttled: the ones catching up, never those that acks=all
//! waits for. A leader over its rate answers a throttled follower's fetch with no records;
//! a follower over its rate leaves its throttled partitions out of its next fetch.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use spool_metadata::MetadataImage;
use tokio::time::Instant;

use crate::state::lock;

pub const LEADER_RATE: &str = "leader.replication.throttled.rate";
pub const FOLLOWER_RATE: &str = "follower.replication.throttled.rate";
pub const LEADER_REPLICAS: &str = "leader.replication.throttled.replicas";
pub const FOLLOWER_REPLICAS: &str = "follower.replication.throttled.replicas";

/// The broker settings that set a rate (dynamic only, as in Kafka).
pub const RATES: [&str; 2] = [LEADER_RATE, FOLLOWER_RATE];

/// A byte rate, as a bucket that fills at the rate and holds at most a second of it.
pub struct Quota {
    rate: AtomicI64,
    bucket: Mutex<(f64, Instant)>,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            rate: AtomicI64::new(i64::MAX),
            bucket: Mutex::new((0.0, Instant::now())),
        }
    }
}

impl Quota {
    pub fn set_rate(&self, bytes_per_second: i64) {
        if self.rate.swap(bytes_per_second, Ordering::Relaxed) != bytes_per_second {
            *lock(&self.bucket) = (bytes_per_second as f64, Instant::now());
        }
    }

    /// Whether a rate is set (else nothing is ever held back, and which replicas a topic
    /// throttles need not be looked up).
    pub fn is_limited(&self) -> bool {
        self.rate().is_some()
    }

    fn rate(&self) -> Option<f64> {
        let rate = self.rate.load(Ordering::Relaxed);
        (rate != i64::MAX).then_some(rate as f64)
    }

    /// The bucket's level now: what it held plus what the rate added since, at most a
    /// second's worth.
    fn level(&self) -> Option<std::sync::MutexGuard<'_, (f64, Instant)>> {
        let rate = self.rate()?;
        let mut bucket = lock(&self.bucket);
        let now = Instant::now();
        let (tokens, at) = *bucket;
        *bucket = (
            (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate),
            now,
        );
        Some(bucket)
    }

    /// Whether the bytes recorded lately have used up the rate.
    pub fn exceeded(&self) -> bool {
        self.level().is_some_and(|bucket| bucket.0 <= 0.0)
    }

    /// Counts `bytes` against the rate.
    pub fn record(&self, bytes: usize) {
        if let Some(mut bucket) = self.level() {
            bucket.0 -= bytes as f64;
        }
    }
}

/// Whether a topic's `key` (one of the `*.replication.throttled.replicas`) names
/// `broker`'s replica of `partition`.
pub fn is_throttled(
    configs: &BTreeMap<String, String>,
    key: &str,
    partition: i32,
    broker: i32,
) -> bool {
    let Some(value) = configs.get(key) else {
        return false;
    };
    let wanted = format!("{partition}:{broker}");
    value
        .split(',')
        .map(str::trim)
        .any(|entry| entry == "*" || entry == wanted)
}

/// The rate `key` in force on broker `node`: its own dynamic setting, else the
/// cluster-wide one, else unlimited (`i64::MAX`).
pub fn rate(image: &MetadataImage, node: i32, key: &str) -> i64 {
    [node.to_string(), String::new()]
        .iter()
        .find_map(|name| image.broker_configs(name)?.get(key)?.trim().parse().ok())
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_replicas_are_named_by_pairs_or_a_star() {
        let configs = |value: &str| BTreeMap::from([(LEADER_REPLICAS.to_string(), value.into())]);
        assert!(is_throttled(&configs("0:1, 2:3"), LEADER_REPLICAS, 2, 3));
        assert!(!is_throttled(&configs("0:1,2:3"), LEADER_REPLICAS, 2, 1));
        assert!(is_throttled(&configs("*"), LEADER_REPLICAS, 7, 9));
        assert!(!is_throttled(&configs("*"), FOLLOWER_REPLICAS, 7, 9));
        assert!(!is_throttled(&BTreeMap::new(), LEADER_REPLICAS, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_holds_bytes_to_its_rate() {
        let quota = Quota::default();
        quota.record(1 << 30);
        assert!(!quota.exceeded(), "unlimited until a rate is set");
        quota.set_rate(1000);
        assert!(!quota.exceeded(), "a second's worth to start with");
        quota.record(1500);
        assert!(quota.exceeded());
        tokio::time::advance(std::time::Duration::from_millis(400)).await;
        assert!(quota.exceeded(), "-500 + 400");
        tokio::time::advance(std::time::Duration::from_millis(200)).await;
        assert!(!quota.exceeded(), "-500 + 600");
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        quota.record(1000);
        assert!(quota.exceeded(), "no more than a second's worth saved up");
        quota.set_rate(i64::MAX);
        assert!(!quota.exceeded());
    }
}
