//! [`Consumer`]: reads records from assigned partitions, from a position given by offset,
//! by time, or by the earliest or latest offset.
//!
//! `poll` sends one Fetch per partition leader at once (long polling: the broker holds it
//! until there is data or `max_wait` passes), decodes the batches, and moves each
//! partition's position past what it returns. With `read_committed`, records of aborted
//! transactions are dropped using the aborted-transaction list the broker sends, and
//! control batches are never returned. A leader that moved makes the consumer refresh its
//! metadata and fetch from the new one; an out-of-range position is reset as
//! `auto_offset_reset` says.
//!
//! A consumer either is assigned partitions ([`Consumer::assign`]) or subscribes to
//! topics as a member of a consumer group ([`Consumer::subscribe`], with
//! `ConsumerConfig::group_id`). A subscribed consumer joins the group on its first `poll`
//! (the classic protocol, range assignor; see the `membership` module), starts each
//! partition it is given at the group's committed offset, commits its positions every
//! `auto_commit_interval` and on [`Consumer::close`], and joins again when the group
//! rebalances.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_protocol::ErrorCode;
use spool_protocol::messages::{FetchRequest, fetch_request, fetch_response};
use spool_protocol::record_batch::{RecordBatches, TimestampType};
use tokio::task::JoinSet;

use crate::admin::{Admin, OffsetSpec};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::membership::{MemberTimeouts, Membership};

/// Which records a consumer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    ReadUncommitted = 0,
    /// Only committed transactions' records, up to the last stable offset.
    ReadCommitted = 1,
}

/// Where to start when a partition has no valid position (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail instead.
    None,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub isolation_level: IsolationLevel,
    pub auto_offset_reset: OffsetReset,
    /// How long the broker may hold a fetch waiting for `min_bytes` (`fetch.max.wait.ms`).
    pub max_wait: Duration,
    pub min_bytes: i32,
    /// The most bytes one fetch response may carry (`fetch.max.bytes`).
    pub max_bytes: i32,
    /// The most bytes per partition in one fetch (`max.partition.fetch.bytes`).
    pub partition_max_bytes: i32,
    /// The largest a compressed batch may grow when decompressed.
    pub decompressed_max_bytes: usize,
    /// The consumer group to join when subscribing (`group.id`).
    pub group_id: Option<String>,
    /// How long the group keeps a member that stops heartbeating (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to join again, and so the longest time
    /// between two polls of a group member (`max.poll.interval.ms`).
    pub rebalance_timeout: Duration,
    /// How often a member heartbeats (`heartbeat.interval.ms`).
    pub heartbeat_interval: Duration,
    /// How often `poll` commits a group member's positions (`auto.commit.interval.ms`);
    /// `None` leaves commits to [`Consumer::commit`] and [`Consumer::commit_offsets`].
    pub auto_commit_interval: Option<Duration>,
}

impl Default for ConsumerConfig {
    /// The Java client's defaults.
    fn default() -> Self {
        ConsumerConfig {
            isolation_level: IsolationLevel::ReadUncommitted,
            auto_offset_reset: OffsetReset::Latest,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            decompressed_max_bytes: 256 * 1024 * 1024,
            group_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            auto_commit_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// A record as consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// Whether the timestamp is the broker's (LogAppendTime) rather than the producer's.
    pub log_append_time: bool,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub leader_epoch: i32,
}

/// A partition of a topic.
pub type TopicPartition = (String, i32);

/// Reads records from assigned partitions; see the module documentation.
pub struct Consumer {
    admin: Admin,
    config: ConsumerConfig,
    /// The next offset to read per assigned partition; `None` until known.
    positions: BTreeMap<TopicPartition, Option<i64>>,
    /// The high watermark each partition's last fetch reported.
    high_watermarks: BTreeMap<TopicPartition, i64>,
    /// The group membership of a subscribed consumer.
    membership: Option<Membership>,
    last_commit: Instant,
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            admin: Admin::new(client),
            config,
            positions: BTreeMap::new(),
            high_watermarks: BTreeMap::new(),
            membership: None,
            last_commit: Instant::now(),
        }
    }

    pub fn client(&self) -> &Client {
        self.admin.client()
    }

    /// Reads exactly these partitions from now on; positions of partitions kept stay.
    /// A subscribed consumer stops heartbeating and so drops out of its group.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        self.membership = None;
        let wanted: BTreeSet<TopicPartition> = partitions.into_iter().collect();
        self.positions.retain(|tp, _| wanted.contains(tp));
        for tp in wanted {
            self.positions.entry(tp).or_insert(None);
        }
    }

    /// Reads `topics` as a member of the group `ConsumerConfig::group_id`: the group
    /// decides which partitions, and each starts from the group's committed offset
    /// (or as `auto_offset_reset` says when there is none). Joining happens in `poll`.
    pub fn subscribe(&mut self, topics: impl IntoIterator<Item = String>) -> Result<()> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(Error::Invalid(
                "subscribing needs a group: set ConsumerConfig::group_id".into(),
            ));
        };
        let mut topics: Vec<String> = topics.into_iter().collect();
        topics.sort();
        topics.dedup();
        self.positions.clear();
        // A JoinGroup is held for the whole rebalance; on a shared connection it would
        // hold up other members' heartbeats and joins behind it.
        self.admin = Admin::new(self.client().with_own_connections());
        self.membership = Some(Membership::new(
            group,
            topics,
            MemberTimeouts {
                session: self.config.session_timeout,
                rebalance: self.config.rebalance_timeout,
                heartbeat_interval: self.config.heartbeat_interval,
            },
        ));
        Ok(())
    }

    /// The generation of the group this consumer is a member of, while it is in one.
    pub fn group_generation(&self) -> Option<i32> {
        self.membership.as_ref().and_then(Membership::generation)
    }

    /// Commits the position of every assigned partition as the group's offset.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets = self.known_positions();
        self.commit_offsets(&offsets).await
    }

    fn known_positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.positions
            .iter()
            .filter_map(|(tp, p)| Some((tp.clone(), (*p)?)))
            .collect()
    }

    /// Commits `offsets` (each the next offset to read) as the group's offsets. A group
    /// that has moved to a new generation refuses (REBALANCE_IN_PROGRESS,
    /// ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID) and this member joins again on `poll`.
    pub async fn commit_offsets(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        let Some(membership) = self.membership.as_mut() else {
            return Err(Error::Invalid(
                "committing needs a group: set ConsumerConfig::group_id and subscribe".into(),
            ));
        };
        self.last_commit = Instant::now();
        if offsets.is_empty() {
            return Ok(());
        }
        membership.commit(&self.admin, offsets).await
    }

    /// Leaves the group, after committing the positions when auto-commit is on. A
    /// consumer without a group has nothing to do.
    pub async fn close(mut self) -> Result<()> {
        if self.membership.is_none() {
            return Ok(());
        }
        let committed = if self.config.auto_commit_interval.is_some() {
            self.commit().await
        } else {
            Ok(())
        };
        let left = match self.membership.as_mut() {
            Some(membership) => membership.leave(&self.admin).await,
            None => Ok(()),
        };
        committed.and(left)
    }

    /// Joins the group when this member is not in its current generation: commits the
    /// old positions first (when auto-committing), then takes the new assignment, each
    /// partition from the group's committed offset.
    async fn keep_membership(&mut self) -> Result<()> {
        if !self.membership.as_ref().is_some_and(Membership::needs_join) {
            return Ok(());
        }
        let offsets = self.known_positions();
        let Some(membership) = self.membership.as_mut() else {
            return Ok(());
        };
        if self.config.auto_commit_interval.is_some() && !offsets.is_empty() {
            // The old generation may already be over; its partitions are then another
            // member's, read again from the last commit that landed.
            let _ = membership.commit(&self.admin, &offsets).await;
        }
        let assignment = membership.join(&self.admin).await?;
        let group = membership.group().to_string();
        let committed = self.admin.committed_offsets(&group).await?;
        self.positions = assignment
            .into_iter()
            .map(|tp| {
                let offset = committed.get(&tp).copied().filter(|o| *o >= 0);
                (tp, offset)
            })
            .collect();
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Every partition of `topic`, in partition order.
    pub async fn partitions_of(&self, topic: &str) -> Result<Vec<TopicPartition>> {
        Ok(self.client().topic(topic).await?.topic_partitions())
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// Moves the position of each assigned partition in `partitions` to `spec`.
    pub async fn seek(&mut self, partitions: &[TopicPartition], spec: OffsetSpec) -> Result<()> {
        let offsets = match spec {
            OffsetSpec::Offset(offset) => {
                partitions.iter().map(|tp| (tp.clone(), offset)).collect()
            }
            spec => {
                self.admin
                    .list_offsets(partitions, spec, self.config.isolation_level)
                    .await?
            }
        };
        for (tp, offset) in offsets {
            if let Some(position) = self.positions.get_mut(&tp) {
                *position = Some(offset);
            }
        }
        Ok(())
    }

    /// The next offset `poll` reads from `tp`, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.get(tp).copied().flatten()
    }

    /// The high watermark of `tp` as its last fetch reported.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.high_watermarks.get(tp).copied()
    }

    /// Fetches once from every assigned partition's leader and returns the records, in
    /// offset order within each partition. Empty when nothing came within `max_wait`.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.keep_membership().await?;
        if let Some(interval) = self.config.auto_commit_interval
            && self.membership.is_some()
            && self.last_commit.elapsed() >= interval
        {
            match self.commit().await {
                Ok(()) => {}
                // The generation ended; the next poll joins again.
                Err(e) if e.code().is_some() => {}
                Err(e) => return Err(e),
            }
        }
        self.reset_unknown_positions().await?;
        let metadata = self.client().metadata();
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64, i32)>> = BTreeMap::new();
        let mut leaderless = Vec::new();
        for (tp, position) in &self.positions {
            let Some(offset) = position else { continue };
            let partition = metadata
                .topics
                .get(&tp.0)
                .and_then(|t| t.partitions.get(usize::try_from(tp.1).ok()?));
            match partition {
                Some(p) if metadata.brokers.contains_key(&p.leader) => {
                    by_leader.entry(p.leader).or_default().push((
                        tp.clone(),
                        *offset,
                        p.leader_epoch,
                    ));
                }
                _ => leaderless.push(tp.0.clone()),
            }
        }
        if !leaderless.is_empty() {
            leaderless.dedup();
            self.client().refresh_metadata(Some(&leaderless)).await?;
            if by_leader.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
        }
        let mut fetches = JoinSet::new();
        for (leader, partitions) in by_leader {
            let client = self.client().clone();
            let request = self.fetch_request(&partitions);
            fetches.spawn(async move {
                // Fetch v13 names topics by ID; this client names them (v12 and below).
                const MAX_VERSION_BY_NAME: i16 = 12;
                let answer = client
                    .send_to_capped(leader, request, Some(MAX_VERSION_BY_NAME))
                    .await;
                (leader, answer)
            });
        }
        let mut records = Vec::new();
        let mut stale = Vec::new();
        let mut first_error = None;
        while let Some(joined) = fetches.join_next().await {
            let Ok((leader, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(response) => {
                    for topic in response.responses {
                        for partition in topic.partitions {
                            let tp = (topic.topic.clone(), partition.partition_index);
                            match self.take_partition(&tp, partition, leader, &mut records) {
                                Ok(()) => {}
                                Err(e) if e.is_retriable() => stale.push(tp.0.clone()),
                                Err(e) => {
                                    first_error.get_or_insert(e);
                                }
                            }
                        }
                    }
                }
                Err(e) if e.is_retriable() => stale.extend(metadata.topics.keys().cloned()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        if !stale.is_empty() {
            stale.sort();
            stale.dedup();
            let _ = self.client().refresh_metadata(Some(&stale)).await;
        }
        Ok(records)
    }

    fn fetch_request(&self, partitions: &[(TopicPartition, i64, i32)]) -> FetchRequest {
        let mut topics: BTreeMap<&str, Vec<fetch_request::FetchPartition>> = BTreeMap::new();
        for ((topic, partition), offset, leader_epoch) in partitions {
            topics
                .entry(topic)
                .or_default()
                .push(fetch_request::FetchPartition {
                    partition: *partition,
                    current_leader_epoch: *leader_epoch,
                    fetch_offset: *offset,
                    partition_max_bytes: self.config.partition_max_bytes,
                    ..Default::default()
                });
        }
        FetchRequest {
            replica_id: -1,
            max_wait_ms: i32::try_from(self.config.max_wait.as_millis()).unwrap_or(i32::MAX),
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            isolation_level: self.config.isolation_level as i8,
            session_id: 0,
            session_epoch: -1,
            topics: topics
                .into_iter()
                .map(|(topic, partitions)| fetch_request::FetchTopic {
                    topic: topic.to_string(),
                    partitions,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Takes one partition's part of a fetch answer: its records, or its error.
    fn take_partition(
        &mut self,
        tp: &TopicPartition,
        partition: fetch_response::PartitionData,
        leader: i32,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<()> {
        let Some(Some(position)) = self.positions.get(tp).copied() else {
            return Ok(());
        };
        let code = ErrorCode::from_wire(partition.error_code);
        if code == ErrorCode::OffsetOutOfRange {
            if self.reset_spec().is_none() {
                return Err(Error::Kafka {
                    code,
                    context: format!("topic {} partition {} offset {position}", tp.0, tp.1),
                    message: None,
                });
            }
            // Looked up again, as auto_offset_reset says, on the next poll.
            self.positions.insert(tp.clone(), None);
            return Ok(());
        }
        let context = format!("topic {} partition {} on broker {leader}", tp.0, tp.1);
        Error::check(partition.error_code, context, None)?;
        self.high_watermarks
            .insert(tp.clone(), partition.high_watermark);
        let Some(data) = partition.records else {
            return Ok(());
        };
        let mut aborted: Vec<(i64, i64)> = partition
            .aborted_transactions
            .unwrap_or_default()
            .iter()
            .map(|a| (a.first_offset, a.producer_id))
            .collect();
        aborted.sort();
        let mut aborted = aborted.into_iter().peekable();
        let mut aborting: BTreeSet<i64> = BTreeSet::new();
        let read_committed = self.config.isolation_level == IsolationLevel::ReadCommitted;
        let mut next = position;
        for batch in RecordBatches::new(data) {
            // A batch cut off at the end of the response is read again next time.
            let Ok(batch) = batch else { break };
            if batch.last_offset() < next {
                continue;
            }
            if read_committed {
                while let Some((_, producer_id)) =
                    aborted.next_if(|(first, _)| *first <= batch.last_offset())
                {
                    aborting.insert(producer_id);
                }
            }
            if batch.is_control() {
                // An abort or commit marker ends the producer's aborted transaction.
                aborting.remove(&batch.producer_id());
                next = batch.last_offset() + 1;
                continue;
            }
            if read_committed && batch.is_transactional() && aborting.contains(&batch.producer_id())
            {
                next = batch.last_offset() + 1;
                continue;
            }
            let log_append_time = batch.timestamp_type() == TimestampType::LogAppendTime;
            let records = batch
                .records(self.config.decompressed_max_bytes)
                .map_err(|e| corrupt(tp, leader, &e))?;
            for record in records {
                let record = record.map_err(|e| corrupt(tp, leader, &e))?;
                if record.offset < next {
                    continue;
                }
                out.push(ConsumerRecord {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: record.offset,
                    timestamp_ms: record.timestamp,
                    log_append_time,
                    key: record.key,
                    value: record.value,
                    headers: record
                        .headers
                        .iter()
                        .map(|h| (String::from_utf8_lossy(&h.key).into_owned(), h.value))
                        .collect(),
                    leader_epoch: batch.partition_leader_epoch(),
                });
            }
            next = batch.last_offset() + 1;
        }
        self.positions.insert(tp.clone(), Some(next));
        Ok(())
    }

    fn reset_spec(&self) -> Option<OffsetSpec> {
        match self.config.auto_offset_reset {
            OffsetReset::Earliest => Some(OffsetSpec::Earliest),
            OffsetReset::Latest => Some(OffsetSpec::Latest),
            OffsetReset::None => None,
        }
    }

    /// Looks up positions of partitions that have none, as `auto_offset_reset` says.
    async fn reset_unknown_positions(&mut self) -> Result<()> {
        let unknown: Vec<TopicPartition> = self
            .positions
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let Some(spec) = self.reset_spec() else {
            let (topic, partition) = &unknown[0];
            return Err(Error::Invalid(format!(
                "topic {topic} partition {partition} has no position and auto_offset_reset is none"
            )));
        };
        self.seek(&unknown, spec).await
    }
}

fn corrupt(tp: &TopicPartition, leader: i32, error: &impl std::fmt::Display) -> Error {
    Error::Kafka {
        code: ErrorCode::CorruptMessage,
        context: format!("topic {} partition {} on broker {leader}", tp.0, tp.1),
        message: Some(error.to_string()),
    }
}
