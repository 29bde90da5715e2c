//! Connection limits, Kafka's way.
//!
//! - `max.connections.per.ip` (with `max.connections.per.ip.overrides`, `ip:count` pairs):
//!   a connection from an address that already has that many is closed as soon as it is
//!   accepted, so one client cannot take every slot.
//! - `max.connections` (broker-wide) and `listener.name.<l>.max.connections`: at the
//!   limit a listener stops accepting until a connection closes. The inter-broker
//!   listener is not held by the broker-wide limit when clients have another listener,
//!   so replication goes on.
//! - `max.connection.creation.rate` (broker-wide, the inter-broker listener exempt as
//!   above) and `listener.name.<l>.max.connection.creation.rate`: connections accepted
//!   per second, over the quota windows; over it a listener waits before accepting the
//!   next connection, as long as brings the rate back (at most one window, KIP-612). The
//!   per-address rate is a client quota (see [`crate::quota::Quotas::connection`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::quota::{QuotaWindows, SampledRate};
use crate::state::lock;

/// What the limits are set to (Kafka's default for each is 2147483647: no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// `max.connections`.
    pub max_connections: usize,
    /// `max.connections.per.ip`.
    pub per_ip: usize,
    /// `max.connections.per.ip.overrides`.
    pub per_ip_overrides: BTreeMap<IpAddr, usize>,
    /// `listener.name.<l>.max.connections`, by upper-case listener name.
    pub per_listener: BTreeMap<String, usize>,
    /// `max.connection.creation.rate`.
    pub creation_rate: usize,
    /// `listener.name.<l>.max.connection.creation.rate`, by upper-case listener name.
    pub creation_rate_per_listener: BTreeMap<String, usize>,
}

/// Kafka's "no limit".
pub const UNLIMITED: usize = i32::MAX as usize;

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_connections: UNLIMITED,
            per_ip: UNLIMITED,
            per_ip_overrides: BTreeMap::new(),
            per_listener: BTreeMap::new(),
            creation_rate: UNLIMITED,
            creation_rate_per_listener: BTreeMap::new(),
        }
    }
}

/// Parses `max.connections.per.ip.overrides`: `ip:count` pairs separated by commas.
pub fn parse_overrides(value: &str) -> Result<BTreeMap<IpAddr, usize>, String> {
    let mut overrides = BTreeMap::new();
    for item in crate::config::list_items(value) {
        let (host, count) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("`{item}` is not ip:count"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host
            .parse()
            .map_err(|_| format!("`{host}` is not an IP address"))?;
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| format!("`{count}` is not a connection count"))?;
        overrides.insert(ip, count);
    }
    Ok(overrides)
}

/// The limits in force and the connections counted against them.
pub struct ConnectionLimits {
    settings: LimitSettings,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Permits for `max.connections`, when it is set.
    broker: Option<Arc<Semaphore>>,
    /// Permits for each listener with a limit of its own.
    listeners: HashMap<String, Arc<Semaphore>>,
    windows: QuotaWindows,
    /// Connections accepted, broker-wide (`None`) and by listener, where a creation rate
    /// is set.
    accepted: Mutex<HashMap<Option<String>, SampledRate>>,
}

/// A connection's place under the limits; dropping it frees the place.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_ip = lock(&self.limits.by_ip);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Semaphores hold at most this many permits.
fn permits(limit: usize) -> usize {
    limit.min(Semaphore::MAX_PERMITS)
}

impl ConnectionLimits {
    pub fn new(settings: LimitSettings, windows: QuotaWindows) -> Arc<ConnectionLimits> {
        let broker = (settings.max_connections < UNLIMITED)
            .then(|| Arc::new(Semaphore::new(permits(settings.max_connections))));
        let listeners = settings
            .per_listener
            .iter()
            .filter(|(_, limit)| **limit < UNLIMITED)
            .map(|(name, limit)| (name.clone(), Arc::new(Semaphore::new(permits(*limit)))))
            .collect();
        Arc::new(ConnectionLimits {
            settings,
            by_ip: Mutex::new(HashMap::new()),
            broker,
            listeners,
            windows,
            accepted: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection accepted on listener `name` (`exempt`: the inter-broker
    /// listener, outside the broker-wide rate) against the creation rates: how long, in
    /// milliseconds, the listener waits before it accepts the next one.
    pub fn accepted(&self, name: &str, exempt: bool, now_ms: i64) -> u64 {
        let listener = self
            .settings
            .creation_rate_per_listener
            .get(name)
            .filter(|&&rate| rate < UNLIMITED)
            .map(|&rate| (Some(name.to_string()), rate));
        let broker = (!exempt && self.settings.creation_rate < UNLIMITED)
            .then_some((None, self.settings.creation_rate));
        let mut accepted = lock(&self.accepted);
        let mut wait = 0;
        for (key, bound) in [listener, broker].into_iter().flatten() {
            let rate = accepted
                .entry(key)
                .or_insert_with(|| SampledRate::new(now_ms));
            rate.record(self.windows, 1.0, now_ms);
            wait = wait.max(rate.throttle_ms(self.windows, bound as f64, now_ms));
        }
        wait.min(self.windows.window())
    }

    /// Waits until listener `name` may accept one more connection (for the inter-broker
    /// listener, `exempt` from the broker-wide limit), and holds that place.
    pub async fn slot(&self, name: &str, exempt: bool) -> Vec<OwnedSemaphorePermit> {
        let mut held = Vec::new();
        let semaphores = [
            self.listeners.get(name),
            if exempt { None } else { self.broker.as_ref() },
        ];
        for semaphore in semaphores.into_iter().flatten() {
            // The semaphores are never closed.
            if let Ok(permit) = Arc::clone(semaphore).acquire_owned().await {
                held.push(permit);
            }
        }
        held
    }

    /// Counts a connection from `ip` holding `permits`, or refuses it when the address
    /// has its `max.connections.per.ip` already.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        permits: Vec<OwnedSemaphorePermit>,
    ) -> Option<Admitted> {
        let limit = self
            .settings
            .per_ip_overrides
            .get(&ip)
            .copied()
            .unwrap_or(self.settings.per_ip);
        let mut by_ip = lock(&self.by_ip);
        let count = by_ip.entry(ip).or_default();
        if *count >= limit {
            if *count == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(Admitted {
            limits: Arc::clone(self),
            ip,
            _permits: permits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_limits_refuse_and_free_places() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let limits = ConnectionLimits::new(
            LimitSettings {
                per_ip: 2,
                per_ip_overrides: parse_overrides("10.0.0.7:0, [::1]:5").unwrap(),
                ..LimitSettings::default()
            },
            QuotaWindows::default(),
        );
        let first = limits.admit(local, Vec::new());
        let second = limits.admit(local, Vec::new());
        assert!(first.is_some() && second.is_some());
        assert!(limits.admit(local, Vec::new()).is_none());
        assert!(limits.admit(other, Vec::new()).is_none());
        drop(first);
        assert!(limits.admit(local, Vec::new()).is_some());
        assert_eq!(
            parse_overrides("::1:5")
                .unwrap()
                .get(&"::1".parse::<IpAddr>().unwrap()),
            Some(&5)
        );
        assert!(parse_overrides("example:4").is_err());
    }

    #[test]
    fn a_listener_over_its_creation_rate_waits_before_the_next_connection() {
        let limits = ConnectionLimits::new(
            LimitSettings {
                creation_rate: 2,
                creation_rate_per_listener: [("EXTERNAL".to_string(), 1)].into(),
                ..LimitSettings::default()
            },
            QuotaWindows::default(),
        );
        // Two per second measured over ten seconds: twenty at once, then a wait.
        let waits: Vec<u64> = (0..21)
            .map(|_| limits.accepted("PLAINTEXT", false, 0))
            .collect();
        assert_eq!(waits[..20], [0; 20]);
        assert_eq!(waits[20], 500);
        // The inter-broker listener is outside the broker-wide rate.
        assert_eq!(limits.accepted("INTERNAL", true, 0), 0);
        // A listener's own rate counts too, and the wait is one window at most.
        let external: Vec<u64> = (0..10)
            .map(|_| limits.accepted("EXTERNAL", true, 0))
            .collect();
        assert_eq!(external[..9], [0; 9]);
        assert_eq!(external[9], 0);
        assert_eq!(limits.accepted("EXTERNAL", false, 0), 1000);
    }

    #[tokio::test]
    async fn a_listener_at_its_limit_waits_for_a_place() {
        let limits = ConnectionLimits::new(
            LimitSettings {
                max_connections: 1,
                ..LimitSettings::default()
            },
            QuotaWindows::default(),
        );
        let held = limits.slot("PLAINTEXT", false).await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            limits.slot("PLAINTEXT", false),
        );
        assert!(waiting.await.is_err(), "a second place was given");
        // The inter-broker listener is not held by the broker-wide limit.
        assert!(limits.slot("INTERNAL", true).await.is_empty());
        drop(held);
        assert_eq!(limits.slot("PLAINTEXT", false).await.len(), 1);
    }
}
