//! [`Producer`]: sends records to their partitions' leaders in batches.
//!
//! `send` puts a record into its partition's open batch and returns at once with a
//! [`Delivery`] to await. A batch leaves when it reaches `batch_size` bytes, when it has
//! waited `linger`, or on `flush`. A background task groups ready batches by leader into
//! Produce requests, keeps up to `max_in_flight` requests outstanding per broker, and
//! resolves each record's delivery with its offset or the error that stopped it.
//! Retriable errors (leader moved, broker gone) refresh metadata and send the batch again
//! until `delivery_timeout` has passed. Memory is bounded: `send` waits while
//! `buffer_bytes` of records are not yet acknowledged.
//!
//! With `acks=all` the producer is idempotent by default, as the Java client is: it asks
//! a broker for a producer ID (InitProducerId) and numbers each partition's batches, so a
//! batch sent again after a lost answer is not written twice, and a partition's batches
//! are written in the order they were sent, up to five of them in flight. A batch the
//! broker refused for being out of order is sent again while an earlier batch of its
//! partition is still unacknowledged. When a partition's sequence cannot be continued (a
//! batch failed for good, or the broker lost the producer's state) the batch fails, and
//! once nothing is in flight the producer takes a new producer ID and numbers from 0
//! again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::messages::{InitProducerIdRequest, ProduceRequest, produce_request};
use spool_protocol::record_batch::{RecordBatchBuilder, RecordBatchMut};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;

/// How many replicas must have a record before it counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Not waited for at all; deliveries carry no offset.
    None = 0,
    /// The leader wrote it.
    Leader = 1,
    /// Every in-sync replica has it (`min.insync.replicas` at least).
    All = -1,
}

/// How a [`Producer`] batches and sends.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// How long a batch waits for more records before it leaves (`linger.ms`).
    pub linger: Duration,
    /// A batch leaves once it holds this many bytes of records (`batch.size`).
    pub batch_size: usize,
    pub compression: Compression,
    /// Produce requests outstanding per broker.
    pub max_in_flight: usize,
    /// How long a record may take, retries included, before its delivery fails.
    pub delivery_timeout: Duration,
    /// The wait before a batch is sent again after a retriable error.
    pub retry_backoff: Duration,
    /// Bytes of records held before `send` waits (`buffer.memory`).
    pub buffer_bytes: usize,
    /// Numbers batches so that retries are not written twice (`enable.idempotence`).
    /// It applies with `acks=all` only (as the Java client, left at its default, turns it
    /// off for lower acks), and then caps `max_in_flight` at 5.
    pub idempotence: bool,
}

impl Default for ProducerConfig {
    /// The Java client's defaults.
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 16 * 1024,
            compression: Compression::None,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            buffer_bytes: 32 * 1024 * 1024,
            idempotence: true,
        }
    }
}

/// A record to send. Without a partition, the key's hash picks one (as the Java client
/// does); without a key either, records stick to one partition per batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; now when `None`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn partition(mut self, partition: i32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// The room the record takes in a batch, roughly (its bytes and a record's overhead).
    fn size_bytes(&self) -> usize {
        const RECORD_OVERHEAD_BYTES: usize = 21;
        RECORD_OVERHEAD_BYTES
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 2)
                .sum::<usize>()
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// The record's offset; -1 with acks=0.
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// A record's delivery, to await.
pub struct Delivery {
    answer: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Delivery {
    /// Waits until the record is acknowledged (or has failed for good).
    pub async fn wait(self) -> Result<RecordMetadata> {
        self.answer
            .await
            .unwrap_or_else(|_| Err(Error::Invalid("the producer closed before delivery".into())))
    }
}

type Waiter = (oneshot::Sender<Result<RecordMetadata>>, i64);

struct OpenBatch {
    builder: RecordBatchBuilder,
    size_bytes: usize,
    created: Instant,
    waiters: Vec<Waiter>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// A batch closed for appends, waiting to be (re)sent.
struct Batch {
    topic: String,
    partition: i32,
    records: Bytes,
    /// An idempotent producer's numbering of the batch, given when it is first sent.
    stamp: Option<Stamp>,
    waiters: Vec<Waiter>,
    /// Released when the batch is done, freeing room for `send`.
    _permits: Vec<OwnedSemaphorePermit>,
    /// When its first record was added: `delivery_timeout` counts from here, as Kafka's
    /// `delivery.timeout.ms` does.
    created: Instant,
    /// Not to be sent before this (a retry's back-off).
    not_before: Instant,
}

/// The sequence an idempotent producer gave a batch, under the producer ID of `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    generation: u64,
    sequence: i32,
}

/// An idempotent producer's ID and epoch, as InitProducerId gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProducerIdentity {
    id: i64,
    epoch: i16,
}

/// Where an idempotent producer stands with its producer ID.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Not idempotent.
    #[default]
    Off,
    /// None yet: one is to be asked for before any batch leaves.
    Needed,
    /// Asked for; batches wait for the answer.
    Asking,
    Known(ProducerIdentity),
}

/// The next sequence after `count` records from `sequence` (sequences wrap to 0 after
/// `i32::MAX`, as Kafka's do).
fn sequence_after(sequence: i32, count: usize) -> i32 {
    let next = (i64::from(sequence) + i64::try_from(count).unwrap_or(0)) % (1 << 31);
    i32::try_from(next).unwrap_or(0)
}

impl Batch {
    fn slot(&self) -> (String, i32) {
        (self.topic.clone(), self.partition)
    }

    fn fail(self, error: &Error) {
        for (waiter, _) in self.waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

#[derive(Default)]
struct Accumulator {
    open: BTreeMap<(String, i32), OpenBatch>,
    /// Per partition, its closed batches in the order they are to be sent.
    ready: BTreeMap<(String, i32), VecDeque<Batch>>,
    /// The partition keyless records of each topic go to now.
    sticky: HashMap<String, i32>,
    in_flight: HashMap<i32, usize>,
    /// Per leader, the queue of requests its lane writes in order.
    lanes: HashMap<i32, mpsc::UnboundedSender<Vec<Batch>>>,
    /// Lanes and the producer-ID request: stopped with the producer.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    identity: Identity,
    /// Counts the producer IDs taken; a batch stamped under an older one is stamped again.
    generation: u64,
    /// Per partition, the sequence its next batch gets.
    sequences: HashMap<(String, i32), i32>,
    /// Per partition, the sequences sent and not yet settled.
    unacked: HashMap<(String, i32), BTreeSet<i32>>,
    /// A sequence could not be continued: a new producer ID is taken once nothing is in
    /// flight, and nothing is sent until then.
    reset_wanted: bool,
    /// Batches not yet done (open, ready or in flight).
    unfinished: usize,
    flushing: bool,
    closed: bool,
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    state: Mutex<Accumulator>,
    /// Wakes the sender: a batch is ready, a request finished, a flush or close began.
    wake: Notify,
    /// Wakes flushers: a batch finished.
    done: Notify,
    memory: Arc<Semaphore>,
}

impl Accumulator {
    /// Forgets a settled batch's sequence. A stamped batch that failed leaves a gap the
    /// broker would refuse to pass, so the producer starts over under a new ID.
    fn settled(&mut self, batch: &Batch, delivered: bool) {
        let Some(stamp) = batch.stamp else {
            return;
        };
        if stamp.generation != self.generation {
            return;
        }
        if let Some(unacked) = self.unacked.get_mut(&batch.slot()) {
            unacked.remove(&stamp.sequence);
        }
        if !delivered {
            self.reset_wanted = true;
        }
    }

    /// Whether an idempotent batch refused with `code` is worth sending again: an out-of-
    /// order or unknown-producer answer is, while an earlier batch of the partition is
    /// unacknowledged (it explains the gap) or once the producer starts over anyway.
    fn sequence_retriable(&self, batch: &Batch, code: ErrorCode) -> bool {
        if !matches!(
            code,
            ErrorCode::OutOfOrderSequenceNumber | ErrorCode::UnknownProducerId
        ) {
            return false;
        }
        let Some(stamp) = batch.stamp else {
            return false;
        };
        if stamp.generation != self.generation || self.reset_wanted {
            return true;
        }
        self.unacked
            .get(&batch.slot())
            .and_then(|unacked| unacked.first())
            .is_some_and(|&first| first != stamp.sequence)
    }

    /// Gives `batch` its partition's next sequence under `identity`, unless it already
    /// has one under the current producer ID.
    fn stamp(&mut self, batch: &mut Batch, identity: ProducerIdentity) -> Result<()> {
        if batch
            .stamp
            .is_some_and(|stamp| stamp.generation == self.generation)
        {
            return Ok(());
        }
        let slot = batch.slot();
        let sequence = self.sequences.get(&slot).copied().unwrap_or(0);
        let mut records = BytesMut::from(std::mem::take(&mut batch.records));
        RecordBatchMut::new(&mut records)
            .map_err(|e| Error::Invalid(format!("cannot number a batch: {e}")))?
            .set_producer(identity.id, identity.epoch, sequence);
        batch.records = records.freeze();
        batch.stamp = Some(Stamp {
            generation: self.generation,
            sequence,
        });
        self.sequences
            .insert(slot.clone(), sequence_after(sequence, batch.waiters.len()));
        self.unacked.entry(slot).or_default().insert(sequence);
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends records in batches; see the module documentation.
pub struct Producer {
    shared: Arc<Shared>,
    sender: tokio::task::JoinHandle<()>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.sender.abort();
        for task in self.shared.lock().tasks.drain(..) {
            task.abort();
        }
    }
}

impl Producer {
    pub fn new(client: Client, mut config: ProducerConfig) -> Producer {
        let permits = config.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let idempotent = config.idempotence && config.acks == Acks::All;
        if idempotent {
            // The broker remembers a producer's last five batches per partition.
            config.max_in_flight = config.max_in_flight.clamp(1, 5);
        }
        let shared = Arc::new(Shared {
            client,
            config,
            state: Mutex::new(Accumulator {
                identity: if idempotent {
                    Identity::Needed
                } else {
                    Identity::Off
                },
                ..Accumulator::default()
            }),
            wake: Notify::new(),
            done: Notify::new(),
            memory: Arc::new(Semaphore::new(permits)),
        });
        let sender = tokio::spawn(run_sender(Arc::clone(&shared)));
        Producer { shared, sender }
    }

    /// Adds `record` to its partition's batch; the returned [`Delivery`] resolves once the
    /// batch is acknowledged. Waits while the producer's buffer is full.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        let shared = &self.shared;
        let size = record.size_bytes();
        let wanted = u32::try_from(size.min(shared.config.buffer_bytes)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&shared.memory)
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| Error::Invalid("the producer is closed".into()))?;
        let partition_count = self.partition_count(&record.topic).await?;
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let (answer, delivery) = oneshot::channel();
        let mut state = shared.lock();
        if state.closed {
            return Err(Error::Invalid("the producer is closed".into()));
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => {
                if p < 0 || usize::try_from(p).is_ok_and(|p| p >= partition_count) {
                    return Err(Error::Invalid(format!(
                        "topic {} has no partition {p} ({partition_count} partitions)",
                        record.topic
                    )));
                }
                p
            }
            (None, Some(key)) => partition_for_key(key, partition_count),
            (None, None) => *state
                .sticky
                .entry(record.topic.clone())
                .or_insert_with(|| first_sticky(partition_count)),
        };
        let slot = (record.topic.clone(), partition);
        let keyless = record.key.is_none() && record.partition.is_none();
        // A record that would overflow the open batch closes it first.
        let overflows = state.open.get(&slot).is_some_and(|open| {
            !open.waiters.is_empty() && open.size_bytes + size > shared.config.batch_size
        });
        if overflows {
            close_batch(&mut state, &slot, partition_count, keyless);
            shared.wake.notify_one();
        }
        if !state.open.contains_key(&slot) {
            state.unfinished += 1;
            state.open.insert(
                slot.clone(),
                OpenBatch {
                    builder: RecordBatchBuilder::new(shared.config.compression),
                    size_bytes: 0,
                    created: Instant::now(),
                    waiters: Vec::new(),
                    permits: Vec::new(),
                },
            );
        }
        let Some(open) = state.open.get_mut(&slot) else {
            return Err(Error::Invalid("no open batch".into()));
        };
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        open.builder
            .append(
                timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )
            .map_err(|e| Error::Invalid(format!("cannot add the record to a batch: {e}")))?;
        open.size_bytes += size;
        open.waiters.push((answer, timestamp_ms));
        open.permits.push(permit);
        if open.size_bytes >= shared.config.batch_size {
            close_batch(&mut state, &slot, partition_count, keyless);
            shared.wake.notify_one();
        } else if open.waiters.len() == 1 {
            // A new batch: the sender must learn its linger deadline.
            shared.wake.notify_one();
        }
        Ok(Delivery { answer: delivery })
    }

    /// Sends every batch now and waits until all records given to `send` before this call
    /// are delivered or failed.
    pub async fn flush(&self) {
        loop {
            let notified = self.shared.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.unfinished == 0 {
                    state.flushing = false;
                    return;
                }
                state.flushing = true;
            }
            self.shared.wake.notify_one();
            notified.await;
        }
    }

    /// Flushes, then stops the producer.
    pub async fn close(self) {
        self.flush().await;
        self.shared.lock().closed = true;
        self.shared.memory.close();
    }

    async fn partition_count(&self, topic: &str) -> Result<usize> {
        let client = &self.shared.client;
        if let Some(count) = client.metadata().partition_count(topic) {
            return Ok(count);
        }
        let metadata = client
            .refresh_metadata_creating(Some(&[topic.to_string()]), true)
            .await?;
        match metadata.partition_count(topic) {
            Some(count) if count > 0 => Ok(count),
            _ => Err(crate::client::unknown_topic(topic)),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A starting partition for keyless records that differs between producers.
fn first_sticky(partition_count: usize) -> i32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    i32::try_from(nanos % partition_count.max(1)).unwrap_or(0)
}

/// Moves the open batch of `slot` to the ready queue. When keyless records filled it, they
/// move on to the next partition.
fn close_batch(
    state: &mut Accumulator,
    slot: &(String, i32),
    partition_count: usize,
    keyless: bool,
) {
    let Some(open) = state.open.remove(slot) else {
        return;
    };
    if keyless && let Some(sticky) = state.sticky.get_mut(&slot.0) {
        let count = i32::try_from(partition_count.max(1)).unwrap_or(1);
        *sticky = (slot.1 + 1) % count;
    }
    match open.builder.build() {
        Ok(records) => state
            .ready
            .entry(slot.clone())
            .or_default()
            .push_back(Batch {
                topic: slot.0.clone(),
                partition: slot.1,
                records,
                stamp: None,
                waiters: open.waiters,
                _permits: open.permits,
                created: open.created,
                not_before: Instant::now(),
            }),
        Err(e) => {
            state.unfinished -= 1;
            let error = Error::Invalid(format!("cannot build a batch: {e}"));
            for (waiter, _) in open.waiters {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

/// The background task: closes lingering batches and sends ready ones.
async fn run_sender(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_deadline = send_ready(&shared);
        match next_deadline {
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline.into(), notified).await;
            }
            None => notified.await,
        }
    }
}

/// Closes batches whose linger has passed (all of them when flushing), starts a request
/// per leader for the ready ones that may go, and returns when to look again.
fn send_ready(shared: &Arc<Shared>) -> Option<Instant> {
    let now = Instant::now();
    let metadata = shared.client.metadata();
    let mut state = shared.lock();
    let linger = shared.config.linger;
    let due: Vec<(String, i32)> = state
        .open
        .iter()
        .filter(|(_, open)| state.flushing || open.created + linger <= now)
        .map(|(slot, _)| slot.clone())
        .collect();
    for slot in due {
        let count = metadata.partition_count(&slot.0).unwrap_or(1);
        close_batch(&mut state, &slot, count, false);
    }
    // An idempotent producer sends nothing without its producer ID.
    let (may_send, identity) = match state.identity {
        Identity::Off => (true, None),
        Identity::Known(identity) if !state.reset_wanted => (true, Some(identity)),
        Identity::Known(_) => {
            if state.in_flight.values().all(|&n| n == 0) {
                // Nothing in flight under the old ID: start over under a new one.
                state.reset_wanted = false;
                state.generation += 1;
                state.sequences.clear();
                state.unacked.clear();
                ask_for_identity(shared, &mut state);
            }
            (false, None)
        }
        Identity::Needed => {
            if !state.ready.is_empty() || !state.open.is_empty() {
                ask_for_identity(shared, &mut state);
            }
            (false, None)
        }
        Identity::Asking => (false, None),
    };
    // One batch per partition per request, as Kafka's clients send. A partition's batches
    // leave in queue order, so only the first of each may go now.
    let mut requests: BTreeMap<i32, Vec<Batch>> = BTreeMap::new();
    let mut next: Option<Instant> = state.open.values().map(|open| open.created + linger).min();
    let mut needs_metadata = false;
    let mut expired = 0;
    let mut ready = std::mem::take(&mut state.ready);
    for (slot, queue) in ready.iter_mut() {
        // Retries first, then in creation order: once the first has not expired, none has.
        while let Some(batch) = queue.pop_front() {
            if batch.created + shared.config.delivery_timeout > now {
                queue.push_front(batch);
                break;
            }
            // Never sent in time (no leader, or retries until now): failed, as Kafka's
            // producer expires a batch whatever it waits for.
            let error = Error::Kafka {
                code: ErrorCode::RequestTimedOut,
                context: format!("topic {} partition {}", slot.0, slot.1),
                message: Some(format!(
                    "not delivered within the delivery timeout ({} ms)",
                    shared.config.delivery_timeout.as_millis()
                )),
            };
            state.settled(&batch, false);
            batch.fail(&error);
            expired += 1;
        }
        let Some(first) = queue.front() else {
            continue;
        };
        let expiry = first.created + shared.config.delivery_timeout;
        next = Some(next.map_or(expiry, |n| n.min(expiry)));
        if !may_send {
            continue;
        }
        if first.not_before > now {
            next = Some(next.map_or(first.not_before, |n| n.min(first.not_before)));
            continue;
        }
        let leader = metadata
            .topics
            .get(&slot.0)
            .and_then(|t| t.partitions.get(usize::try_from(slot.1).ok()?))
            .map(|p| p.leader)
            .filter(|leader| metadata.brokers.contains_key(leader));
        let Some(leader) = leader else {
            needs_metadata = true;
            continue;
        };
        let in_flight = state.in_flight.get(&leader).copied().unwrap_or(0);
        let batches = requests.entry(leader).or_default();
        if batches.is_empty() && in_flight >= shared.config.max_in_flight {
            continue;
        }
        let Some(mut batch) = queue.pop_front() else {
            continue;
        };
        if let Some(identity) = identity
            && let Err(error) = state.stamp(&mut batch, identity)
        {
            batch.fail(&error);
            expired += 1;
            continue;
        }
        batches.push(batch);
    }
    ready.retain(|_, queue| !queue.is_empty());
    state.ready = ready;
    requests.retain(|_, batches| !batches.is_empty());
    if expired > 0 {
        state.unfinished -= expired;
        shared.done.notify_waiters();
    }
    for (leader, batches) in requests {
        *state.in_flight.entry(leader).or_default() += 1;
        let lane = match state.lanes.get(&leader) {
            Some(lane) if !lane.is_closed() => lane.clone(),
            _ => {
                let (lane, queue) = mpsc::unbounded_channel();
                let task = tokio::spawn(run_lane(Arc::clone(shared), leader, queue));
                state.tasks.push(task);
                state.lanes.insert(leader, lane.clone());
                lane
            }
        };
        if let Err(mpsc::error::SendError(batches)) = lane.send(batches) {
            // Only a lane whose task ended refuses; its batches are tried again.
            if let Some(count) = state.in_flight.get_mut(&leader) {
                *count = count.saturating_sub(1);
            }
            requeue(&mut state, batches, now);
        }
    }
    if needs_metadata {
        let retry_at = now + shared.config.retry_backoff;
        next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
        let topics: Vec<String> = state.ready.keys().map(|(topic, _)| topic.clone()).collect();
        let client = shared.client.clone();
        tokio::spawn(async move {
            let _ = client.refresh_metadata(Some(&topics)).await;
        });
    }
    next
}

/// Puts batches to send again at the head of their partitions' queues, not before
/// `not_before`, keeping each partition's batches in sequence order.
fn requeue(state: &mut Accumulator, batches: Vec<Batch>, not_before: Instant) {
    let idempotent = state.identity != Identity::Off;
    for mut batch in batches.into_iter().rev() {
        batch.not_before = not_before;
        let queue = state.ready.entry(batch.slot()).or_default();
        queue.push_front(batch);
        if idempotent {
            // Stamped batches (all sent before) ahead of fresh ones, lowest sequence
            // first; a stable sort keeps the fresh ones in their order.
            queue
                .make_contiguous()
                .sort_by_key(|batch| batch.stamp.map_or((1, 0), |s| (0, s.sequence)));
        }
    }
}

/// Asks a broker for a producer ID in the background (InitProducerId without a
/// transactional ID), until one answers. A refusal fails the batches waiting for it.
fn ask_for_identity(shared: &Arc<Shared>, state: &mut Accumulator) {
    state.identity = Identity::Asking;
    state.tasks.retain(|task| !task.is_finished());
    let task = tokio::spawn({
        let shared = Arc::clone(shared);
        async move {
            loop {
                let request = InitProducerIdRequest {
                    transactional_id: None,
                    transaction_timeout_ms: i32::MAX,
                    ..Default::default()
                };
                let answer = shared.client.send_any(request).await.and_then(|r| {
                    Error::check(r.error_code, "InitProducerId", None)?;
                    Ok(ProducerIdentity {
                        id: r.producer_id,
                        epoch: r.producer_epoch,
                    })
                });
                match answer {
                    Ok(identity) => shared.lock().identity = Identity::Known(identity),
                    Err(e) if e.is_retriable() => {
                        tokio::time::sleep(shared.config.retry_backoff).await;
                        continue;
                    }
                    Err(e) => {
                        let failed: Vec<Batch> = {
                            let mut state = shared.lock();
                            state.identity = Identity::Needed;
                            let failed: Vec<Batch> = std::mem::take(&mut state.ready)
                                .into_values()
                                .flatten()
                                .collect();
                            state.unfinished -= failed.len();
                            failed
                        };
                        for batch in failed {
                            batch.fail(&e);
                        }
                        shared.done.notify_waiters();
                    }
                }
                shared.wake.notify_one();
                return;
            }
        }
    });
    state.tasks.push(task);
}

/// What a Produce answer said per partition: error code, base offset, error message and
/// log append time.
type Answers = HashMap<(String, i32), (i16, i64, Option<String>, i64)>;

/// Writes the requests for one leader in the order they were made (so that a partition's
/// batches are appended in order), and settles each when its answer comes.
async fn run_lane(
    shared: Arc<Shared>,
    leader: i32,
    mut queue: mpsc::UnboundedReceiver<Vec<Batch>>,
) {
    // Produce v13 names topics by ID; this client names them (v12 and below).
    const MAX_VERSION_BY_NAME: i16 = 12;
    while let Some(batches) = queue.recv().await {
        let request = produce_request(&shared, &batches);
        if shared.config.acks == Acks::None {
            let sent = shared
                .client
                .send_unanswered(leader, request, Some(MAX_VERSION_BY_NAME))
                .await;
            settle(&shared, leader, batches, sent.map(|()| HashMap::new())).await;
            continue;
        }
        match shared
            .client
            .send_ordered(leader, request, Some(MAX_VERSION_BY_NAME))
            .await
        {
            Ok(answer) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let outcome = answer.await.map(|response| {
                        response
                            .responses
                            .into_iter()
                            .flat_map(|topic| {
                                let name = topic.name;
                                topic.partition_responses.into_iter().map(move |p| {
                                    let answer = (
                                        p.error_code,
                                        p.base_offset,
                                        p.error_message,
                                        p.log_append_time_ms,
                                    );
                                    ((name.clone(), p.index), answer)
                                })
                            })
                            .collect()
                    });
                    settle(&shared, leader, batches, outcome).await;
                });
            }
            Err(e) => settle(&shared, leader, batches, Err(e)).await,
        }
    }
}

/// The Produce request carrying `batches` (one per partition).
fn produce_request(shared: &Shared, batches: &[Batch]) -> ProduceRequest {
    let mut topics: BTreeMap<&str, Vec<produce_request::PartitionProduceData>> = BTreeMap::new();
    for batch in batches.iter() {
        topics
            .entry(&batch.topic)
            .or_default()
            .push(produce_request::PartitionProduceData {
                index: batch.partition,
                records: Some(batch.records.clone()),
                ..Default::default()
            });
    }
    ProduceRequest {
        acks: shared.config.acks as i16,
        timeout_ms: i32::try_from(shared.client.config().request_timeout.as_millis())
            .unwrap_or(i32::MAX),
        topic_data: topics
            .into_iter()
            .map(|(name, partition_data)| produce_request::TopicProduceData {
                name: name.to_string(),
                partition_data,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Resolves the deliveries of `batches` from the answer `leader` gave (or the error that
/// stopped the request); retriable failures go back to the ready queue after a back-off.
async fn settle(shared: &Arc<Shared>, leader: i32, batches: Vec<Batch>, outcome: Result<Answers>) {
    let retried = resolve(shared, leader, batches, &outcome);
    if !retried.is_empty() {
        let _ = shared.client.refresh_metadata(Some(&retried)).await;
    }
    if let Some(count) = shared.lock().in_flight.get_mut(&leader) {
        *count = count.saturating_sub(1);
    }
    shared.wake.notify_one();
    shared.done.notify_waiters();
}

/// Resolves the deliveries of the batches `outcome` settles and puts the ones to send
/// again back at the head of their partitions' queues, at once: while the metadata is
/// refreshed, a partition's later batches must not overtake them (an idempotent
/// producer's retry that came more than five batches late would be refused as out of
/// order, though written). Returns the topics of the retried batches.
fn resolve(
    shared: &Shared,
    leader: i32,
    batches: Vec<Batch>,
    outcome: &Result<Answers>,
) -> Vec<String> {
    let config = &shared.config;
    let mut retry = Vec::new();
    let mut finished = 0;
    let mut state = shared.lock();
    for batch in batches {
        let result = match outcome {
            Err(e) => Err(e.clone()),
            Ok(_) if config.acks == Acks::None => Ok((-1, -1)),
            Ok(answers) => match answers.get(&(batch.topic.clone(), batch.partition)) {
                None => Err(Error::Protocol {
                    broker: format!("{leader}"),
                    reason: format!(
                        "no answer for topic {} partition {}",
                        batch.topic, batch.partition
                    ),
                }),
                // An idempotent batch older than the broker's memory of the producer's
                // last five: written before, at an offset no longer known.
                Some((code, ..)) if *code == ErrorCode::DuplicateSequenceNumber.code() => {
                    Ok((-1, -1))
                }
                Some((code, base_offset, message, append_time)) => {
                    let context = format!(
                        "topic {} partition {} on broker {leader}",
                        batch.topic, batch.partition
                    );
                    match Error::kafka(*code, context, message.clone()) {
                        Some(error) => Err(error),
                        None => Ok((*base_offset, *append_time)),
                    }
                }
            },
        };
        match result {
            Ok((base_offset, append_time)) => {
                state.settled(&batch, true);
                for (index, (waiter, timestamp_ms)) in batch.waiters.into_iter().enumerate() {
                    let offset = if base_offset < 0 {
                        -1
                    } else {
                        base_offset + i64::try_from(index).unwrap_or(0)
                    };
                    let _ = waiter.send(Ok(RecordMetadata {
                        topic: batch.topic.clone(),
                        partition: batch.partition,
                        offset,
                        timestamp_ms: if append_time >= 0 {
                            append_time
                        } else {
                            timestamp_ms
                        },
                    }));
                }
                finished += 1;
            }
            Err(error) => {
                let expired = batch.created.elapsed() >= config.delivery_timeout;
                let retriable = error.is_retriable()
                    || error
                        .code()
                        .is_some_and(|code| state.sequence_retriable(&batch, code));
                if retriable && !expired {
                    retry.push(batch);
                } else {
                    state.settled(&batch, false);
                    batch.fail(&error);
                    finished += 1;
                }
            }
        }
    }
    state.unfinished -= finished;
    let topics = retry.iter().map(|b| b.topic.clone()).collect();
    requeue(&mut state, retry, Instant::now() + config.retry_backoff);
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_to_zero_after_the_largest_i32() {
        assert_eq!(sequence_after(0, 5), 5);
        assert_eq!(sequence_after(i32::MAX - 4, 5), 0);
        assert_eq!(sequence_after(i32::MAX - 1, 3), 1);
    }
}
