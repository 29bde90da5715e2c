//! Client quotas, Kafka's way: byte rates for producers (`producer_byte_rate`, the size
//! of their produce requests) and consumers (`consumer_byte_rate`, the size of their fetch
//! responses), and the share of a request thread's time their requests take
//! (`request_percentage`, 100 = one thread), per user, per client ID, or per both, with
//! defaults at each level. The quotas live in the metadata log (AlterClientQuotas); this
//! module measures and decides.
//!
//! Which quota applies is Kafka's precedence: user and client ID, user and default client,
//! user, default user and client ID, default user and default client, default user,
//! client ID, default client. The level that matches also decides who shares the quota:
//! a user's quota is shared by all its clients, a client ID's by every user of it.
//!
//! `controller_mutation_rate` (partitions created, added or deleted per second) is a
//! token bucket, as Kafka's: `quota × quota.window.num × quota.window.size.seconds`
//! partitions of burst, refilled at the quota. A CreateTopics (v6+), DeleteTopics (v5+)
//! or CreatePartitions (v3+) request finding the bucket empty has that topic refused with
//! THROTTLING_QUOTA_EXCEEDED; older versions are always served and only throttled.
//!
//! `connection_creation_rate` is a quota of the `ip` entity (an address, or the default
//! for every address): a connection from an address over it is held, uncounted, for the
//! throttle time and then closed (KIP-612).
//!
//! Rates are measured as Kafka's `Rate` does, over `quota.window.num` samples of
//! `quota.window.size.seconds`. A client over its quota is told `throttle_time_ms`, the
//! time until its rate is back at the quota, and its connection is not read for that long
//! (KIP-219).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use spool_metadata::{MetadataImage, QuotaEntity};

use crate::state::lock;

pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
pub const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";
pub const CONNECTION_CREATION_RATE: &str = "connection_creation_rate";

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

/// How rates are sampled: `quota.window.num` and `quota.window.size.seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindows {
    pub samples: u32,
    pub window_ms: i64,
}

impl QuotaWindows {
    /// One window, in milliseconds.
    pub fn window(self) -> u64 {
        u64::try_from(self.window_ms).unwrap_or(0)
    }
}

impl Default for QuotaWindows {
    fn default() -> Self {
        QuotaWindows {
            samples: 11,
            window_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    start_ms: i64,
    last_event_ms: i64,
    value: f64,
}

/// A rate over the last samples, measured as Kafka's `Rate` measures it: the sum of the
/// samples over the time they cover, counted as at least all but one whole window.
#[derive(Debug, Clone)]
pub(crate) struct SampledRate {
    samples: Vec<Sample>,
    current: usize,
}

impl SampledRate {
    pub(crate) fn new(now_ms: i64) -> SampledRate {
        SampledRate {
            samples: vec![Sample {
                start_ms: now_ms,
                last_event_ms: now_ms,
                value: 0.0,
            }],
            current: 0,
        }
    }

    /// Forgets samples older than all the windows together.
    fn purge(&mut self, windows: QuotaWindows, now_ms: i64) {
        let expiry = i64::from(windows.samples) * windows.window_ms;
        for sample in &mut self.samples {
            if now_ms - sample.last_event_ms >= expiry {
                *sample = Sample {
                    start_ms: now_ms,
                    last_event_ms: now_ms,
                    value: 0.0,
                };
            }
        }
    }

    pub(crate) fn record(&mut self, windows: QuotaWindows, value: f64, now_ms: i64) {
        self.purge(windows, now_ms);
        if now_ms - self.samples[self.current].start_ms >= windows.window_ms {
            // One more sample than windows: the current one fills while the others count.
            let ring = windows.samples as usize + 1;
            self.current = (self.current + 1) % ring;
            let fresh = Sample {
                start_ms: now_ms,
                last_event_ms: now_ms,
                value: 0.0,
            };
            if self.current == self.samples.len() {
                self.samples.push(fresh);
            } else {
                self.samples[self.current] = fresh;
            }
        }
        let sample = &mut self.samples[self.current];
        sample.value += value;
        sample.last_event_ms = now_ms;
    }

    /// The time the samples cover, in milliseconds.
    fn window_ms(&self, windows: QuotaWindows, now_ms: i64) -> i64 {
        let oldest = self
            .samples
            .iter()
            .map(|s| s.start_ms)
            .min()
            .unwrap_or(now_ms);
        let mut elapsed = now_ms - oldest;
        let full = elapsed / windows.window_ms.max(1);
        let least = i64::from(windows.samples.saturating_sub(1));
        if full < least {
            elapsed += (least - full) * windows.window_ms;
        }
        elapsed.max(1)
    }

    /// Per second.
    fn rate(&mut self, windows: QuotaWindows, now_ms: i64) -> f64 {
        self.purge(windows, now_ms);
        let total: f64 = self.samples.iter().map(|s| s.value).sum();
        total * 1000.0 / self.window_ms(windows, now_ms) as f64
    }

    /// How long until the rate is back within `bound` (Kafka's throttle time): 0 when it
    /// is within, one window at least when `bound` is 0.
    pub(crate) fn throttle_ms(&mut self, windows: QuotaWindows, bound: f64, now_ms: i64) -> u64 {
        let observed = self.rate(windows, now_ms);
        if observed <= bound {
            return 0;
        }
        if bound <= 0.0 {
            return windows.window();
        }
        let window = self.window_ms(windows, now_ms) as f64;
        ((observed - bound) / bound * window).round() as u64
    }
}

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bytes of produce requests.
    Produce,
    /// Bytes of fetch responses.
    Fetch,
    /// Time spent serving requests, in percent-seconds of one thread (see
    /// [`request_percent`]).
    Request,
    /// Connections opened from one IP address.
    Connection,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Produce => PRODUCER_BYTE_RATE,
            Kind::Fetch => CONSUMER_BYTE_RATE,
            Kind::Request => REQUEST_PERCENTAGE,
            Kind::Connection => CONNECTION_CREATION_RATE,
        }
    }
}

/// What serving a request for `busy` counts against `request_percentage`: percent of one
/// thread for one second, so that a client keeping a thread busy has a rate of 100.
pub fn request_percent(busy: std::time::Duration) -> f64 {
    busy.as_secs_f64() * 100.0
}

/// The quota that applies to a user's client and who shares it: (user, client ID) with an
/// empty string for a level the quota does not depend on.
fn resolve(
    quotas: &BTreeMap<QuotaEntity, BTreeMap<String, f64>>,
    key: &str,
    user: &str,
    client_id: &str,
) -> Option<(f64, String, String)> {
    let entity = |user: Option<Option<&str>>, client: Option<Option<&str>>| {
        let mut entity: QuotaEntity = Vec::with_capacity(2);
        if let Some(client) = client {
            entity.push((CLIENT_ID.to_string(), client.map(str::to_string)));
        }
        if let Some(user) = user {
            entity.push((USER.to_string(), user.map(str::to_string)));
        }
        entity
    };
    let (named_user, named_client) = (Some(Some(user)), Some(Some(client_id)));
    let (default_user, default_client) = (Some(None), Some(None));
    let both = (user.to_string(), client_id.to_string());
    let levels = [
        (entity(named_user, named_client), both.clone()),
        (entity(named_user, default_client), both.clone()),
        (entity(named_user, None), (user.to_string(), String::new())),
        (entity(default_user, named_client), both.clone()),
        (entity(default_user, default_client), both),
        (
            entity(default_user, None),
            (user.to_string(), String::new()),
        ),
        (
            entity(None, named_client),
            (String::new(), client_id.to_string()),
        ),
        (
            entity(None, default_client),
            (String::new(), client_id.to_string()),
        ),
    ];
    levels.into_iter().find_map(|(entity, (u, c))| {
        quotas
            .get(&entity)
            .and_then(|q| q.get(key))
            .map(|&bound| (bound, u, c))
    })
}

struct Tracked {
    rate: SampledRate,
    last_ms: i64,
}

/// Partitions a group of clients may still mutate; below zero it is in debt.
struct Bucket {
    tokens: f64,
    last_ms: i64,
}

/// The `controller_mutation_rate` that applies to a client, and who shares it.
#[derive(Debug, Clone, PartialEq)]
pub struct MutationQuota {
    bound: f64,
    who: (String, String),
}

/// Every client group's rates. Groups idle for an hour are forgotten, as Kafka expires
/// its quota sensors.
pub struct Quotas {
    windows: QuotaWindows,
    rates: Mutex<HashMap<(Kind, String, String), Tracked>>,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
    last_sweep_ms: Mutex<i64>,
}

const IDLE_EXPIRY_MS: i64 = 3_600_000;

impl Quotas {
    pub fn new(windows: QuotaWindows) -> Quotas {
        Quotas {
            windows,
            rates: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            last_sweep_ms: Mutex::new(0),
        }
    }

    /// Records `value` (bytes, or percent-seconds) for a request of `user`'s client
    /// `client_id` and returns how long the client must wait: 0 when it is within its
    /// quota or has none. A request-time throttle is at most one window, as Kafka caps it.
    pub fn record(
        &self,
        image: &MetadataImage,
        kind: Kind,
        (user, client_id): (&str, &str),
        value: f64,
        now_ms: i64,
    ) -> u64 {
        let quotas = image.client_quotas();
        if quotas.is_empty() {
            return 0;
        }
        let Some((bound, user, client)) = resolve(quotas, kind.key(), user, client_id) else {
            return 0;
        };
        if user.is_empty() && client.is_empty() {
            return 0;
        }
        self.charge(kind, bound, (user, client), value, now_ms)
    }

    /// Records `value` against the rate of the clients sharing a `kind` quota of `bound`;
    /// the throttle time.
    fn charge(
        &self,
        kind: Kind,
        bound: f64,
        (user, client): (String, String),
        value: f64,
        now_ms: i64,
    ) -> u64 {
        self.sweep(now_ms);
        let mut rates = lock(&self.rates);
        let tracked = rates
            .entry((kind, user, client))
            .or_insert_with(|| Tracked {
                rate: SampledRate::new(now_ms),
                last_ms: now_ms,
            });
        tracked.last_ms = now_ms;
        tracked.rate.record(self.windows, value, now_ms);
        let throttle = tracked.rate.throttle_ms(self.windows, bound, now_ms);
        match kind {
            Kind::Request | Kind::Connection => throttle.min(self.windows.window()),
            Kind::Produce | Kind::Fetch => throttle,
        }
    }

    /// Counts a connection from `ip` against its `connection_creation_rate` (the quota of
    /// the `ip` entity naming the address, else of the default `ip` entity; each address
    /// has a rate of its own). 0 when it is within its rate or has none; else how long to
    /// hold the connection before closing it (at most one window), and the connection is
    /// not counted, as in Kafka.
    pub fn connection(&self, image: &MetadataImage, ip: IpAddr, now_ms: i64) -> u64 {
        let quotas = image.client_quotas();
        if quotas.is_empty() {
            return 0;
        }
        let ip = ip.to_canonical().to_string();
        let bound = [Some(ip.clone()), None].into_iter().find_map(|name| {
            quotas
                .get(&vec![(IP.to_string(), name)])
                .and_then(|q| q.get(CONNECTION_CREATION_RATE))
                .copied()
        });
        let Some(bound) = bound else {
            return 0;
        };
        let who = (ip, String::new());
        let throttle = self.charge(Kind::Connection, bound, who.clone(), 1.0, now_ms);
        if throttle > 0 {
            self.charge(Kind::Connection, bound, who, -1.0, now_ms);
        }
        throttle
    }

    /// The `controller_mutation_rate` of `user`'s client `client_id`, if it has one.
    pub fn mutation_quota(
        image: &MetadataImage,
        (user, client_id): (&str, &str),
    ) -> Option<MutationQuota> {
        let (bound, user, client) = resolve(
            image.client_quotas(),
            CONTROLLER_MUTATION_RATE,
            user,
            client_id,
        )?;
        (bound > 0.0 && !(user.is_empty() && client.is_empty())).then_some(MutationQuota {
            bound,
            who: (user, client),
        })
    }

    /// The bucket of `quota`'s clients, refilled up to now.
    fn bucket<'a>(
        &self,
        buckets: &'a mut HashMap<(String, String), Bucket>,
        quota: &MutationQuota,
        now_ms: i64,
    ) -> &'a mut Bucket {
        let burst =
            quota.bound * f64::from(self.windows.samples) * self.windows.window_ms as f64 / 1000.0;
        let bucket = buckets.entry(quota.who.clone()).or_insert(Bucket {
            tokens: burst,
            last_ms: now_ms,
        });
        let elapsed = (now_ms - bucket.last_ms).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + quota.bound * elapsed).min(burst);
        bucket.last_ms = now_ms;
        bucket
    }

    /// Takes `partitions` from `quota`'s bucket. `strict`: nothing is taken, and false
    /// comes back, when the bucket is already in debt (a request that empties it is still
    /// served whole, as in Kafka).
    pub fn spend(&self, quota: &MutationQuota, partitions: f64, strict: bool, now_ms: i64) -> bool {
        self.sweep(now_ms);
        let mut buckets = lock(&self.buckets);
        let bucket = self.bucket(&mut buckets, quota, now_ms);
        if strict && bucket.tokens < 0.0 {
            return false;
        }
        bucket.tokens -= partitions;
        true
    }

    /// How long `quota`'s clients must wait until their bucket is out of debt.
    pub fn mutation_throttle(&self, quota: &MutationQuota, now_ms: i64) -> u64 {
        let mut buckets = lock(&self.buckets);
        let bucket = self.bucket(&mut buckets, quota, now_ms);
        if bucket.tokens >= 0.0 {
            return 0;
        }
        (-bucket.tokens / quota.bound * 1000.0).ceil() as u64
    }

    fn sweep(&self, now_ms: i64) {
        {
            let mut last = lock(&self.last_sweep_ms);
            if now_ms - *last < 60_000 {
                return;
            }
            *last = now_ms;
        }
        lock(&self.rates).retain(|_, t| now_ms - t.last_ms < IDLE_EXPIRY_MS);
        lock(&self.buckets).retain(|_, b| now_ms - b.last_ms < IDLE_EXPIRY_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_measured_over_the_windows() {
        let windows = QuotaWindows::default();
        let mut rate = SampledRate::new(0);
        // 1000 bytes every 100 ms for 20 s: 10 kB/s.
        for t in (0..20_000).step_by(100) {
            rate.record(windows, 1000.0, t);
        }
        let measured = rate.rate(windows, 20_000);
        assert!((measured - 10_000.0).abs() < 1_000.0, "{measured}");
        // Early on the window counts as ten seconds, not the little time seen.
        let mut young = SampledRate::new(0);
        young.record(windows, 5000.0, 0);
        assert_eq!(young.window_ms(windows, 500), 10_500);
        assert!((young.rate(windows, 500) - 5000.0 / 10.5).abs() < 1e-6);
    }

    #[test]
    fn an_address_over_its_connection_creation_rate_is_held_and_not_counted() {
        use spool_metadata::MetadataRecord;
        use spool_protocol::internal::ClientQuotaRecord;
        use spool_protocol::internal::client_quota_record::EntityData;
        let quota = |name: Option<&str>, value: f64| {
            MetadataRecord::ClientQuota(ClientQuotaRecord {
                entity: vec![EntityData {
                    entity_type: IP.into(),
                    entity_name: name.map(str::to_string),
                    ..Default::default()
                }],
                key: CONNECTION_CREATION_RATE.into(),
                value,
                ..Default::default()
            })
        };
        let mut image = MetadataImage::default();
        let quotas = Quotas::new(QuotaWindows::default());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(quotas.connection(&image, local, 0), 0);
        // 2 per second, measured over ten seconds at first: 20 connections at once fit,
        // the 21st is held 500 ms, as brings 21 back to 2 per second.
        image.apply(&quota(None, 2.0));
        image.apply(&quota(Some("10.0.0.9"), 100.0));
        let held: Vec<u64> = (0..23)
            .map(|_| quotas.connection(&image, local, 0))
            .collect();
        assert_eq!(held[..20], [0; 20]);
        // Held connections are not counted: each later one is held as long.
        assert_eq!(held[20..], [500, 500, 500]);
        // Once the first are out of every window, the address starts afresh.
        assert_eq!(quotas.connection(&image, local, 11_000), 0);
        // Each address has its own rate; a named address its own quota; an IPv4 address
        // seen through IPv6 is that address.
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        for _ in 0..50 {
            assert_eq!(quotas.connection(&image, mapped, 0), 0);
        }
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        assert_eq!(quotas.connection(&image, other, 0), 0);
    }

    #[test]
    fn throttles_bring_the_rate_back_to_the_quota_and_request_time_waits_one_window_at_most() {
        let quotas = Quotas::new(QuotaWindows::default());
        let who = || ("alice".to_string(), String::new());
        // 20 kB at once against 1 kB/s, measured over 10 s: 2 kB/s, one window over.
        assert_eq!(
            quotas.charge(Kind::Produce, 1000.0, who(), 20_000.0, 0),
            10_000
        );
        // A thread busy for 2 s against 10% of one: far over, yet one window's wait.
        let spent = request_percent(std::time::Duration::from_secs(2));
        assert_eq!(spent, 200.0);
        assert_eq!(quotas.charge(Kind::Request, 10.0, who(), spent, 0), 1000);
        // Within the quota: no wait.
        let other = ("bob".to_string(), String::new());
        assert_eq!(quotas.charge(Kind::Request, 10.0, other, 1.0, 0), 0);
    }

    #[test]
    fn mutations_draw_on_a_bucket_of_the_windows_worth_and_strict_requests_stop_in_debt() {
        let quotas = Quotas::new(QuotaWindows::default());
        let quota = MutationQuota {
            bound: 2.0,
            who: ("alice".into(), String::new()),
        };
        // Two partitions a second over 11 windows: 22 at once.
        assert!(quotas.spend(&quota, 20.0, true, 0));
        assert_eq!(quotas.mutation_throttle(&quota, 0), 0);
        // Not yet in debt: served whole, into debt.
        assert!(quotas.spend(&quota, 8.0, true, 0));
        assert_eq!(quotas.mutation_throttle(&quota, 0), 3000);
        // In debt: refused when strict, served (and counted) when not.
        assert!(!quotas.spend(&quota, 1.0, true, 1000));
        assert!(quotas.spend(&quota, 2.0, false, 1000));
        assert_eq!(quotas.mutation_throttle(&quota, 1000), 3000);
        // The debt is paid at the quota's rate; the bucket refills up to its burst.
        assert_eq!(quotas.mutation_throttle(&quota, 4000), 0);
        assert!(quotas.spend(&quota, 1.0, true, 4000));
        assert!(quotas.spend(&quota, 23.0, true, 1_000_000));
        assert_eq!(quotas.mutation_throttle(&quota, 1_000_000), 500);
    }

    fn quota(
        entity: &[(&str, Option<&str>)],
        key: &str,
        value: f64,
    ) -> (QuotaEntity, BTreeMap<String, f64>) {
        let mut entity: QuotaEntity = entity
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
            .collect();
        entity.sort();
        (entity, BTreeMap::from([(key.to_string(), value)]))
    }

    #[test]
    fn the_most_specific_quota_applies_and_names_who_shares_it() {
        let key = PRODUCER_BYTE_RATE;
        let quotas: BTreeMap<QuotaEntity, BTreeMap<String, f64>> = [
            quota(&[(USER, Some("alice")), (CLIENT_ID, Some("app"))], key, 1.0),
            quota(&[(USER, Some("alice"))], key, 2.0),
            quota(&[(USER, None)], key, 3.0),
            quota(&[(CLIENT_ID, Some("tool"))], key, 4.0),
            quota(&[(CLIENT_ID, None)], key, 5.0),
        ]
        .into_iter()
        .collect();
        let found = |user: &str, client: &str| resolve(&quotas, key, user, client);
        assert_eq!(
            found("alice", "app"),
            Some((1.0, "alice".into(), "app".into()))
        );
        assert_eq!(
            found("alice", "other"),
            Some((2.0, "alice".into(), String::new()))
        );
        assert_eq!(
            found("bob", "tool"),
            Some((3.0, "bob".into(), String::new()))
        );
        assert_eq!(resolve(&quotas, CONSUMER_BYTE_RATE, "bob", "tool"), None);
        let clients_only: BTreeMap<QuotaEntity, BTreeMap<String, f64>> = [
            quota(&[(CLIENT_ID, Some("tool"))], key, 4.0),
            quota(&[(CLIENT_ID, None)], key, 5.0),
        ]
        .into_iter()
        .collect();
        let found = |user: &str, client: &str| resolve(&clients_only, key, user, client);
        assert_eq!(
            found("bob", "tool"),
            Some((4.0, String::new(), "tool".into()))
        );
        assert_eq!(found("bob", "x"), Some((5.0, String::new(), "x".into())));
    }
}
