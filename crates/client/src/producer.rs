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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::messages::{ProduceRequest, produce_request};
use spool_protocol::record_batch::RecordBatchBuilder;
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
    waiters: Vec<Waiter>,
    /// Released when the batch is done, freeing room for `send`.
    _permits: Vec<OwnedSemaphorePermit>,
    /// When its first record was added: `delivery_timeout` counts from here, as Kafka's
    /// `delivery.timeout.ms` does.
    created: Instant,
    /// Not to be sent before this (a retry's back-off).
    not_before: Instant,
}

impl Batch {
    fn fail(self, error: &Error) {
        for (waiter, _) in self.waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

#[derive(Default)]
struct Accumulator {
    open: BTreeMap<(String, i32), OpenBatch>,
    ready: VecDeque<Batch>,
    /// The partition keyless records of each topic go to now.
    sticky: HashMap<String, i32>,
    in_flight: HashMap<i32, usize>,
    /// Per leader, the queue of requests its lane writes in order.
    lanes: HashMap<i32, mpsc::UnboundedSender<Vec<Batch>>>,
    lane_tasks: Vec<tokio::task::JoinHandle<()>>,
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
        for lane in self.shared.lock().lane_tasks.drain(..) {
            lane.abort();
        }
    }
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let permits = config.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            client,
            config,
            state: Mutex::new(Accumulator::default()),
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
        Ok(records) => state.ready.push_back(Batch {
            topic: slot.0.clone(),
            partition: slot.1,
            records,
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
    // One batch per partition per request, as Kafka's clients send.
    let mut requests: BTreeMap<i32, Vec<Batch>> = BTreeMap::new();
    let mut waiting = VecDeque::new();
    let mut next: Option<Instant> = state.open.values().map(|open| open.created + linger).min();
    let mut needs_metadata = false;
    let mut expired = 0;
    while let Some(batch) = state.ready.pop_front() {
        if batch.created + shared.config.delivery_timeout <= now {
            // Never sent in time (no leader, or retries until now): failed, as Kafka's
            // producer expires a batch whatever it waits for.
            let error = Error::Kafka {
                code: ErrorCode::RequestTimedOut,
                context: format!("topic {} partition {}", batch.topic, batch.partition),
                message: Some(format!(
                    "not delivered within the delivery timeout ({} ms)",
                    shared.config.delivery_timeout.as_millis()
                )),
            };
            batch.fail(&error);
            expired += 1;
            continue;
        }
        if batch.not_before > now {
            next = Some(next.map_or(batch.not_before, |n| n.min(batch.not_before)));
            waiting.push_back(batch);
            continue;
        }
        let leader = metadata
            .topics
            .get(&batch.topic)
            .and_then(|t| t.partitions.get(usize::try_from(batch.partition).ok()?))
            .map(|p| p.leader)
            .filter(|leader| metadata.brokers.contains_key(leader));
        let Some(leader) = leader else {
            needs_metadata = true;
            waiting.push_back(batch);
            continue;
        };
        let in_flight = state.in_flight.get(&leader).copied().unwrap_or(0);
        let batches = requests.entry(leader).or_default();
        let busy = batches
            .iter()
            .any(|b| b.topic == batch.topic && b.partition == batch.partition);
        if busy || (batches.is_empty() && in_flight >= shared.config.max_in_flight) {
            waiting.push_back(batch);
            continue;
        }
        batches.push(batch);
    }
    state.ready = waiting;
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
                state.lane_tasks.push(task);
                state.lanes.insert(leader, lane.clone());
                lane
            }
        };
        if let Err(mpsc::error::SendError(batches)) = lane.send(batches) {
            // Only a lane whose task ended refuses; its batches are tried again.
            state.ready.extend(batches);
        }
    }
    if let Some(expiry) = state
        .ready
        .iter()
        .map(|b| b.created + shared.config.delivery_timeout)
        .min()
    {
        next = Some(next.map_or(expiry, |n| n.min(expiry)));
    }
    if needs_metadata {
        let retry_at = now + shared.config.retry_backoff;
        next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
        let topics: Vec<String> = state.ready.iter().map(|b| b.topic.clone()).collect();
        let client = shared.client.clone();
        tokio::spawn(async move {
            let _ = client.refresh_metadata(Some(&topics)).await;
        });
    }
    next
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
    let config = &shared.config;
    let mut retry = Vec::new();
    let mut finished = 0;
    for batch in batches {
        let result = match &outcome {
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
                if error.is_retriable() && !expired {
                    retry.push(batch);
                } else {
                    batch.fail(&error);
                    finished += 1;
                }
            }
        }
    }
    if !retry.is_empty() {
        let topics: Vec<String> = retry.iter().map(|b| b.topic.clone()).collect();
        let _ = shared.client.refresh_metadata(Some(&topics)).await;
    }
    {
        let mut state = shared.lock();
        if let Some(count) = state.in_flight.get_mut(&leader) {
            *count = count.saturating_sub(1);
        }
        state.unfinished -= finished;
        let not_before = Instant::now() + config.retry_backoff;
        for mut batch in retry.into_iter().rev() {
            batch.not_before = not_before;
            state.ready.push_front(batch);
        }
    }
    shared.wake.notify_one();
    shared.done.notify_waiters();
}
