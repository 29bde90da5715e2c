//! The broker's metrics, in the OpenMetrics text format that Prometheus scrapes from the
//! admin API's `/metrics` (see [`crate::admin_api`]).
//!
//! Two kinds of figures. Counters and histograms are kept up to date where things happen:
//! requests and their latency, bytes and records in and out per topic, ISR changes,
//! authentication failures, syncs. Figures that describe the broker's state (log sizes,
//! under-replicated partitions, consumer-group lag) are read from that state at each
//! scrape, so a deleted topic or group disappears from them.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use spool_metadata::NO_LEADER;
use spool_protocol::messages::ApiKey;
use spool_protocol::record_batch::RecordBatches;

use crate::state::{BrokerState, lock};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The API as Kafka names it (`Produce`, `Fetch`, …).
    request: &'static str,
    version: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PurgatoryLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    topic: String,
    partition: i32,
}

/// Request latencies from 0.1 ms to about 52 s (a long-polling fetch waits up to its
/// `fetch.max.wait.ms`, a JoinGroup up to the rebalance timeout).
fn request_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 20)
}

/// Sync latencies from 50 µs to about 3.3 s.
fn sync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 17)
}

/// Every metric the broker keeps, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    bytes_in: Family<TopicLabels, Counter>,
    messages_in: Family<TopicLabels, Counter>,
    bytes_out: Family<TopicLabels, Counter>,
    messages_out: Family<TopicLabels, Counter>,
    purgatory: Family<PurgatoryLabels, Gauge>,
    under_replicated: Gauge,
    offline: Gauge,
    isr_shrinks: Counter,
    isr_expands: Counter,
    log_size: Family<PartitionLabels, Gauge>,
    log_segments: Family<PartitionLabels, Gauge>,
    connections: Family<ListenerLabels, Gauge>,
    authentication_failures: Family<ListenerLabels, Counter>,
    group_lag: Family<GroupLabels, Gauge>,
    sync: Histogram,
    /// The topics the per-topic counters have labels for.
    topics: Mutex<BTreeSet<String>>,
    /// Held while the state-derived figures are refreshed and everything is encoded, so
    /// that two scrapes at once do not interleave their refreshes.
    scraping: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spool");
        let metrics = Metrics {
            registry: Registry::default(),
            requests: Family::new_with_constructor(|| Histogram::new(request_buckets())),
            bytes_in: Family::default(),
            messages_in: Family::default(),
            bytes_out: Family::default(),
            messages_out: Family::default(),
            purgatory: Family::default(),
            under_replicated: Gauge::default(),
            offline: Gauge::default(),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
            log_size: Family::default(),
            log_segments: Family::default(),
            connections: Family::default(),
            authentication_failures: Family::default(),
            group_lag: Family::default(),
            sync: Histogram::new(sync_buckets()),
            topics: Mutex::default(),
            scraping: Mutex::new(()),
        };
        registry.register(
            "build",
            "This broker's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "request_duration_seconds",
            "Time from reading a request to having its response, by API and version \
             (its count is the request rate)",
            metrics.requests.clone(),
        );
        registry.register(
            "topic_bytes_in",
            "Bytes of record batches produced to a topic (replication excluded)",
            metrics.bytes_in.clone(),
        );
        registry.register(
            "topic_messages_in",
            "Records produced to a topic",
            metrics.messages_in.clone(),
        );
        registry.register(
            "topic_bytes_out",
            "Bytes of record batches fetched from a topic by consumers",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "topic_messages_out",
            "Records fetched from a topic by consumers (whole batches counted)",
            metrics.messages_out.clone(),
        );
        registry.register(
            "purgatory_size",
            "Requests waiting: produce for acks=all, fetch for min.bytes",
            metrics.purgatory.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Partitions this broker leads whose ISR is smaller than their replica set",
            metrics.under_replicated.clone(),
        );
        registry.register(
            "offline_partitions",
            "Partitions of the cluster without a leader, as this broker's metadata shows",
            metrics.offline.clone(),
        );
        registry.register(
            "isr_shrinks",
            "ISR changes this broker made as leader that removed replicas",
            metrics.isr_shrinks.clone(),
        );
        registry.register(
            "isr_expands",
            "ISR changes this broker made as leader that added replicas",
            metrics.isr_expands.clone(),
        );
        registry.register(
            "log_size_bytes",
            "Size on disk of this broker's replica of a partition",
            metrics.log_size.clone(),
        );
        registry.register(
            "log_segments",
            "Segments of this broker's replica of a partition",
            metrics.log_segments.clone(),
        );
        registry.register(
            "connections",
            "Open connections (clients' and other brokers'), by listener",
            metrics.connections.clone(),
        );
        registry.register(
            "authentication_failures",
            "Failed SASL logins and TLS handshakes, by listener",
            metrics.authentication_failures.clone(),
        );
        registry.register(
            "consumer_group_lag",
            "Records a group has yet to commit on a partition (high watermark minus \
             committed offset), for the groups this broker coordinates",
            metrics.group_lag.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Time each sync of the flusher took (acks=all group commits)",
            metrics.sync.clone(),
        );
        // Present from the start, so that a rate over them has a beginning.
        for operation in ["produce", "fetch"] {
            let _ = metrics
                .purgatory
                .get_or_create_owned(&PurgatoryLabels { operation });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Puts `listener`'s connection and authentication-failure series at zero.
    pub fn listener(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        let _ = self.connections.get_or_create_owned(&labels);
        let _ = self.authentication_failures.get_or_create_owned(&labels);
    }

    /// Counts a request of `api` at `version` that took `elapsed`.
    pub fn request(&self, api: ApiKey, version: i16, elapsed: Duration) {
        let labels = RequestLabels {
            request: api.name(),
            version,
        };
        self.requests
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `records` records in `bytes` bytes produced to `topic`.
    pub fn produced(&self, topic: &str, bytes: usize, records: u64) {
        let labels = self.topic_labels(topic);
        self.bytes_in.get_or_create(&labels).inc_by(bytes as u64);
        self.messages_in.get_or_create(&labels).inc_by(records);
    }

    /// Counts the record batches `records` a consumer fetched from `topic`.
    pub fn fetched(&self, topic: &str, records: &bytes::Bytes) {
        if records.is_empty() {
            return;
        }
        let count: u64 = RecordBatches::new(records.clone())
            .filter_map(Result::ok)
            .map(|batch| u64::try_from(batch.record_count()).unwrap_or(0))
            .sum();
        let labels = self.topic_labels(topic);
        self.bytes_out
            .get_or_create(&labels)
            .inc_by(records.len() as u64);
        self.messages_out.get_or_create(&labels).inc_by(count);
    }

    /// The labels of `topic`'s counters, remembered so that they go with the topic.
    fn topic_labels(&self, topic: &str) -> TopicLabels {
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        if self.bytes_in.get(&labels).is_none() && self.bytes_out.get(&labels).is_none() {
            lock(&self.topics).insert(labels.topic.clone());
        }
        labels
    }

    /// Marks a produce request waiting for acks=all until the guard is dropped.
    pub fn produce_waiting(&self) -> Held {
        Held::new(self.purgatory.get_or_create_owned(&PurgatoryLabels {
            operation: "produce",
        }))
    }

    /// Marks a fetch waiting for data until the guard is dropped.
    pub fn fetch_waiting(&self) -> Held {
        Held::new(
            self.purgatory
                .get_or_create_owned(&PurgatoryLabels { operation: "fetch" }),
        )
    }

    /// Counts a connection to `listener` until the guard is dropped.
    pub fn connection(&self, listener: &str) -> Held {
        Held::new(self.connections.get_or_create_owned(&ListenerLabels {
            listener: listener.to_string(),
        }))
    }

    /// Counts a failed login or TLS handshake on `listener`.
    pub fn authentication_failed(&self, listener: &str) {
        self.authentication_failures
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// Counts an ISR change the controller accepted, from `before` to `after` members.
    pub fn isr_changed(&self, before: usize, after: usize) {
        if after < before {
            self.isr_shrinks.inc();
        } else if after > before {
            self.isr_expands.inc();
        }
    }

    /// The histogram the flusher times its syncs in.
    pub fn sync_histogram(&self) -> Histogram {
        self.sync.clone()
    }

    /// Every metric in the OpenMetrics text format, the state-derived ones read from
    /// `state` now.
    pub fn render(&self, state: &BrokerState) -> Result<String, std::fmt::Error> {
        let _scraping = lock(&self.scraping);
        self.refresh(state);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh(&self, state: &BrokerState) {
        let me = state.config.node_id;
        let image = state.current_image();
        let mut under_replicated = 0;
        let mut offline = 0;
        for topic in image.topics() {
            for partition in &topic.partitions {
                if partition.leader == NO_LEADER {
                    offline += 1;
                } else if partition.leader == me && partition.isr.len() < partition.replicas.len() {
                    under_replicated += 1;
                }
            }
        }
        self.under_replicated.set(under_replicated);
        self.offline.set(offline);

        // Topics gone from the metadata leave the per-topic counters.
        lock(&self.topics).retain(|topic| {
            if image.topic(topic).is_some() {
                return true;
            }
            let labels = TopicLabels {
                topic: topic.clone(),
            };
            for family in [
                &self.bytes_in,
                &self.messages_in,
                &self.bytes_out,
                &self.messages_out,
            ] {
                family.remove(&labels);
            }
            false
        });

        self.log_size.clear();
        self.log_segments.clear();
        for (tp, replica) in state.replicas() {
            let (size, segments) = replica
                .log
                .with_log(|log| (log.size_bytes(), log.segment_count()));
            let labels = PartitionLabels {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            };
            self.log_size
                .get_or_create(&labels)
                .set(i64::try_from(size).unwrap_or(i64::MAX));
            self.log_segments
                .get_or_create(&labels)
                .set(i64::try_from(segments).unwrap_or(i64::MAX));
        }

        self.group_lag.clear();
        for (group, lag) in crate::group::lag::all_lags(state) {
            self.group_lag
                .get_or_create(&GroupLabels {
                    group,
                    topic: lag.topic,
                    partition: lag.partition,
                })
                .set(lag.lag);
        }
    }
}

/// A gauge raised while this value lives.
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    fn new(gauge: Gauge) -> Held {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
