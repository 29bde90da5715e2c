//! One partition's transactional IDs: Kafka's transaction state machine, with time passed
//! in and no I/O. A step checks a request against the ID's producer, epoch and state,
//! changes the state, and leaves the record to append in [`TxnShard::take_records`]; when
//! a transaction ends it also returns a [`MarkerJob`], the markers the runtime must write
//! before it calls [`TxnShard::complete`].
//!
//! States, as Kafka names them: Empty (no transaction), Ongoing (partitions added),
//! PrepareCommit / PrepareAbort (the decision is durable; markers being written),
//! CompleteCommit / CompleteAbort (markers written), PrepareEpochFence (an ongoing
//! transaction being aborted because a newer producer took the ID — transitional, never
//! stored) and Dead (the ID expired).
//!
//! Epochs (KIP-890 "transaction version 2"): a client that ends its transactions with
//! EndTxn v5 or later gets the epoch bumped at the end of every transaction, and learns the
//! new one from the EndTxn answer. Markers carry the bumped epoch, so a late produce or
//! EndTxn of the previous transaction is fenced and can never touch the next one. Older
//! clients keep one epoch per InitProducerId, as in Kafka.

use std::collections::{BTreeSet, HashMap, HashSet};

use spool_protocol::ErrorCode;
use spool_protocol::internal::TransactionLogValue;
use spool_protocol::internal::transaction_log_value::PartitionsSchema;

use super::TxnConfig;
use super::records::TxnRecord;

/// A transaction's state, with the numbers Kafka stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnState {
    pub fn from_i8(value: i8) -> Option<TxnState> {
        Some(match value {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions report.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }

    /// Whether the transaction's outcome is decided (its markers written or being written).
    fn has_ended(self) -> bool {
        self.is_prepare() || matches!(self, TxnState::CompleteCommit | TxnState::CompleteAbort)
    }

    fn is_complete_or_empty(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

/// A partition a transaction wrote to.
pub type TopicPartition = (String, i32);

/// One transactional ID's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer ID before the last epoch overflow, for retries across it.
    pub previous_producer_id: i64,
    /// The producer ID to switch to once the transaction completes (epoch overflow).
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retry of the request that bumped it is known.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// 2 when the client uses transaction version 2 (epoch bump per transaction).
    pub client_version: i16,
}

impl TxnMetadata {
    fn to_value(&self) -> TransactionLogValue {
        let mut topics: Vec<PartitionsSchema> = Vec::new();
        for (topic, partition) in &self.partitions {
            match topics.last_mut() {
                Some(last) if &last.topic == topic => last.partition_ids.push(*partition),
                _ => topics.push(PartitionsSchema {
                    topic: topic.clone(),
                    partition_ids: vec![*partition],
                    ..Default::default()
                }),
            }
        }
        TransactionLogValue {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: self.next_producer_id,
            producer_epoch: self.producer_epoch,
            transaction_timeout_ms: self.timeout_ms,
            transaction_status: self.state as i8,
            transaction_partitions: Some(topics),
            transaction_last_update_timestamp_ms: self.last_update_ms,
            transaction_start_timestamp_ms: self.start_ms,
            client_transaction_version: self.client_version,
            ..Default::default()
        }
    }

    fn from_value(value: &TransactionLogValue) -> Option<TxnMetadata> {
        let state = TxnState::from_i8(value.transaction_status)?;
        let partitions = value
            .transaction_partitions
            .iter()
            .flatten()
            .flat_map(|t| t.partition_ids.iter().map(|&p| (t.topic.clone(), p)))
            .collect();
        Some(TxnMetadata {
            producer_id: value.producer_id,
            previous_producer_id: value.previous_producer_id,
            next_producer_id: value.next_producer_id,
            producer_epoch: value.producer_epoch,
            last_producer_epoch: -1,
            timeout_ms: value.transaction_timeout_ms,
            state,
            partitions,
            start_ms: value.transaction_start_timestamp_ms,
            last_update_ms: value.transaction_last_update_timestamp_ms,
            client_version: value.client_transaction_version,
        })
    }
}

/// The markers that end a transaction: written to each partition, then
/// [`TxnShard::complete`] is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerJob {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The epoch the markers carry (the bumped one under transaction version 2).
    pub producer_epoch: i16,
    pub commit: bool,
    pub partitions: Vec<TopicPartition>,
}

/// What InitProducerId decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Ready {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// An ongoing transaction was fenced and is being aborted: write these markers,
    /// complete it, and ask again.
    AbortFirst(MarkerJob),
}

/// What EndTxn decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Nothing to write (a retry of a completed end, or an empty transaction): the
    /// producer ID and epoch to continue with.
    Done {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// Write these markers, complete the transaction, then answer with its ID and epoch.
    Markers(MarkerJob),
}

/// A producer's identity in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
}

/// Allocates producer IDs (from the metadata log's blocks).
pub type AllocateId<'a> = &'a mut dyn FnMut() -> Result<i64, ErrorCode>;

pub struct TxnShard {
    config: TxnConfig,
    txns: HashMap<String, TxnMetadata>,
    records: Vec<TxnRecord>,
    /// Transactions whose markers a runtime task is writing.
    in_flight: HashSet<String>,
}

impl TxnShard {
    pub fn new(config: TxnConfig) -> TxnShard {
        TxnShard {
            config,
            txns: HashMap::new(),
            records: Vec::new(),
            in_flight: HashSet::new(),
        }
    }

    /// The records the steps since the last call produced, in order.
    pub fn take_records(&mut self) -> Vec<TxnRecord> {
        std::mem::take(&mut self.records)
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TxnMetadata)> {
        self.txns.iter()
    }

    /// Applies a record read back from the log.
    pub fn replay(&mut self, record: TxnRecord) {
        match record.value.as_ref().and_then(TxnMetadata::from_value) {
            Some(mut metadata) if metadata.state != TxnState::Dead => {
                // The epoch before the last bump is not stored: under version 2 every
                // ended transaction bumped it by one.
                if metadata.client_version >= 2
                    && metadata.state.has_ended()
                    && metadata.producer_epoch > 0
                {
                    metadata.last_producer_epoch = metadata.producer_epoch - 1;
                }
                self.txns.insert(record.transactional_id, metadata);
            }
            _ => {
                self.txns.remove(&record.transactional_id);
            }
        }
    }

    fn write(&mut self, transactional_id: &str) {
        if let Some(metadata) = self.txns.get(transactional_id) {
            self.records.push(TxnRecord {
                transactional_id: transactional_id.to_string(),
                value: Some(metadata.to_value()),
            });
        }
    }

    /// InitProducerId with a transactional ID: a new producer ID for a new ID; otherwise
    /// the epoch is bumped (a new producer ID when it would overflow), fencing every
    /// older instance. An ongoing transaction is aborted first. `expected` is the
    /// producer ID and epoch a KIP-360 client re-initialising itself sends.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<Producer>,
        now: i64,
        allocate: AllocateId<'_>,
    ) -> Result<InitOutcome, ErrorCode> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(ErrorCode::InvalidTransactionTimeout);
        }
        let Some(metadata) = self.txns.get_mut(transactional_id) else {
            if expected.is_some() {
                return Err(ErrorCode::InvalidProducerIdMapping);
            }
            let producer_id = allocate()?;
            self.txns.insert(
                transactional_id.to_string(),
                TxnMetadata {
                    producer_id,
                    previous_producer_id: -1,
                    next_producer_id: -1,
                    producer_epoch: 0,
                    last_producer_epoch: -1,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    last_update_ms: now,
                    client_version: 0,
                },
            );
            self.write(transactional_id);
            return Ok(InitOutcome::Ready {
                producer_id,
                producer_epoch: 0,
            });
        };
        if let Some(expected) = expected {
            let known = expected.id == metadata.producer_id
                && (expected.epoch == metadata.producer_epoch
                    || expected.epoch == metadata.last_producer_epoch);
            let before_overflow = expected.id == metadata.previous_producer_id;
            if !known && !before_overflow {
                return Err(ErrorCode::ProducerFenced);
            }
        }
        match metadata.state {
            TxnState::PrepareCommit
            | TxnState::PrepareAbort
            | TxnState::PrepareEpochFence
            | TxnState::Dead => Err(ErrorCode::ConcurrentTransactions),
            TxnState::Ongoing => {
                // The new instance fences the old one: its transaction is aborted under
                // a bumped epoch, so nothing the old one still sends can land.
                metadata.state = TxnState::PrepareEpochFence;
                let job = self.prepare_end(transactional_id, false, true, now, allocate)?;
                Ok(InitOutcome::AbortFirst(job))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                bump_epoch(metadata, allocate)?;
                metadata.state = TxnState::Empty;
                metadata.partitions.clear();
                metadata.timeout_ms = timeout_ms;
                metadata.start_ms = -1;
                metadata.last_update_ms = now;
                let ready = InitOutcome::Ready {
                    producer_id: metadata.producer_id,
                    producer_epoch: metadata.producer_epoch,
                };
                self.write(transactional_id);
                Ok(ready)
            }
        }
    }

    /// Checks that a request comes from the ID's current producer and epoch.
    fn current(
        &mut self,
        transactional_id: &str,
        producer: Producer,
    ) -> Result<&mut TxnMetadata, ErrorCode> {
        let metadata = self
            .txns
            .get_mut(transactional_id)
            .ok_or(ErrorCode::InvalidProducerIdMapping)?;
        if metadata.producer_id != producer.id {
            return Err(ErrorCode::InvalidProducerIdMapping);
        }
        if metadata.producer_epoch != producer.epoch {
            return Err(ErrorCode::ProducerFenced);
        }
        Ok(metadata)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn, and the implicit add of a transaction
    /// version 2 produce or offset commit (`client_version` 2): the partitions join the
    /// transaction, which starts if none was open. With `verify_only` nothing changes: the
    /// answer says whether every partition is already in the ongoing transaction
    /// (KIP-890's verification for older clients).
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer: Producer,
        partitions: &[TopicPartition],
        verify_only: bool,
        client_version: i16,
        now: i64,
    ) -> Result<(), ErrorCode> {
        let metadata = self.current(transactional_id, producer)?;
        if metadata.state.is_prepare() || metadata.state == TxnState::PrepareEpochFence {
            return Err(ErrorCode::ConcurrentTransactions);
        }
        let all_in = metadata.state == TxnState::Ongoing
            && partitions.iter().all(|p| metadata.partitions.contains(p));
        if verify_only {
            return if all_in {
                Ok(())
            } else {
                Err(ErrorCode::InvalidTxnState)
            };
        }
        if all_in {
            return Ok(());
        }
        if metadata.state != TxnState::Ongoing {
            metadata.state = TxnState::Ongoing;
            metadata.partitions.clear();
            metadata.start_ms = now;
            metadata.client_version = client_version;
        }
        metadata.partitions.extend(partitions.iter().cloned());
        metadata.last_update_ms = now;
        self.write(transactional_id);
        Ok(())
    }

    /// EndTxn: commit or abort the ongoing transaction. `bump` is set for clients of
    /// transaction version 2 (EndTxn v5+), whose epoch moves on with every transaction; a
    /// retry of their previous EndTxn carries the epoch before the bump.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer: Producer,
        commit: bool,
        bump: bool,
        now: i64,
        allocate: AllocateId<'_>,
    ) -> Result<EndOutcome, ErrorCode> {
        let metadata = self
            .txns
            .get_mut(transactional_id)
            .ok_or(ErrorCode::InvalidProducerIdMapping)?;
        let same_id = metadata.producer_id == producer.id;
        // A retry of the EndTxn that bumped the epoch (or moved to a new producer ID).
        let retry = bump
            && metadata.state.has_ended()
            && ((same_id
                && metadata.last_producer_epoch >= 0
                && producer.epoch == metadata.last_producer_epoch)
                || (!same_id && producer.id == metadata.previous_producer_id));
        if !same_id && !retry {
            return Err(ErrorCode::InvalidProducerIdMapping);
        }
        if !retry && producer.epoch != metadata.producer_epoch {
            return Err(ErrorCode::ProducerFenced);
        }
        let done = EndOutcome::Done {
            producer_id: metadata.producer_id,
            producer_epoch: metadata.producer_epoch,
        };
        if retry {
            return match (metadata.state, commit) {
                (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(done),
                (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                    Err(ErrorCode::ConcurrentTransactions)
                }
                _ => Err(ErrorCode::InvalidTxnState),
            };
        }
        match (metadata.state, commit) {
            (TxnState::Ongoing, _) => self
                .prepare_end(transactional_id, commit, bump, now, allocate)
                .map(EndOutcome::Markers),
            // Under version 2 an abort with nothing open still moves the epoch on, so a
            // client unsure whether its sends reached a partition can fence them.
            (state, false) if bump && state.is_complete_or_empty() => {
                bump_epoch(metadata, allocate)?;
                metadata.state = TxnState::CompleteAbort;
                metadata.last_update_ms = now;
                let done = EndOutcome::Done {
                    producer_id: metadata.producer_id,
                    producer_epoch: metadata.producer_epoch,
                };
                self.write(transactional_id);
                Ok(done)
            }
            // Older clients retry with the same epoch.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) if !bump => {
                Ok(done)
            }
            (TxnState::PrepareCommit, true)
            | (TxnState::PrepareAbort, false)
            | (TxnState::PrepareEpochFence, _) => Err(ErrorCode::ConcurrentTransactions),
            _ => Err(ErrorCode::InvalidTxnState),
        }
    }

    /// Moves an ongoing (or fenced) transaction to PrepareCommit / PrepareAbort and hands
    /// out its markers. With `bump` the epoch moves on first (transaction version 2, a
    /// fence, or a timeout), and the markers carry the new epoch.
    fn prepare_end(
        &mut self,
        transactional_id: &str,
        commit: bool,
        bump: bool,
        now: i64,
        allocate: AllocateId<'_>,
    ) -> Result<MarkerJob, ErrorCode> {
        let metadata = self
            .txns
            .get_mut(transactional_id)
            .ok_or(ErrorCode::InvalidProducerIdMapping)?;
        if bump {
            metadata.last_producer_epoch = metadata.producer_epoch;
            if metadata.producer_epoch >= i16::MAX - 1 {
                // The markers take the last epoch; the next transaction a new ID.
                metadata.next_producer_id = allocate()?;
                metadata.producer_epoch = i16::MAX;
            } else {
                metadata.producer_epoch += 1;
            }
        }
        metadata.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        metadata.last_update_ms = now;
        let job = MarkerJob {
            transactional_id: transactional_id.to_string(),
            producer_id: metadata.producer_id,
            producer_epoch: metadata.producer_epoch,
            commit,
            partitions: metadata.partitions.iter().cloned().collect(),
        };
        self.in_flight.insert(transactional_id.to_string());
        self.write(transactional_id);
        Ok(job)
    }

    /// The markers of `job` are written: the transaction completes. Returns the producer
    /// ID and epoch the client continues with.
    pub fn complete(&mut self, job: &MarkerJob, now: i64) -> Option<Producer> {
        self.in_flight.remove(&job.transactional_id);
        let metadata = self.txns.get_mut(&job.transactional_id)?;
        if metadata.producer_id != job.producer_id
            || metadata.producer_epoch != job.producer_epoch
            || !metadata.state.is_prepare()
        {
            return None;
        }
        metadata.state = if job.commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        metadata.partitions.clear();
        metadata.last_update_ms = now;
        if metadata.next_producer_id >= 0 {
            metadata.previous_producer_id = metadata.producer_id;
            metadata.producer_id = metadata.next_producer_id;
            metadata.next_producer_id = -1;
            metadata.producer_epoch = 0;
            metadata.last_producer_epoch = -1;
        }
        let producer = Producer {
            id: metadata.producer_id,
            epoch: metadata.producer_epoch,
        };
        self.write(&job.transactional_id);
        Some(producer)
    }

    /// A marker job failed (a partition could not be written): it will be handed out again
    /// by [`Self::tick`].
    pub fn retry_later(&mut self, job: &MarkerJob) {
        self.in_flight.remove(&job.transactional_id);
    }

    /// Advances time: transactions open longer than their timeout are aborted under a
    /// bumped epoch (fencing their producer); transactions whose decision is durable but
    /// whose markers no task is writing (after a load, or a failed attempt) are handed
    /// out; IDs idle past `transactional.id.expiration.ms` are removed. Returns the marker
    /// jobs to run.
    pub fn tick(&mut self, now: i64, allocate: AllocateId<'_>) -> Vec<MarkerJob> {
        let mut jobs = Vec::new();
        let mut timed_out = Vec::new();
        let mut expired = Vec::new();
        for (id, metadata) in &self.txns {
            match metadata.state {
                TxnState::Ongoing
                    if now.saturating_sub(metadata.start_ms) > i64::from(metadata.timeout_ms) =>
                {
                    timed_out.push(id.clone());
                }
                TxnState::PrepareCommit | TxnState::PrepareAbort
                    if !self.in_flight.contains(id) =>
                {
                    jobs.push(MarkerJob {
                        transactional_id: id.clone(),
                        producer_id: metadata.producer_id,
                        producer_epoch: metadata.producer_epoch,
                        commit: metadata.state == TxnState::PrepareCommit,
                        partitions: metadata.partitions.iter().cloned().collect(),
                    });
                }
                state
                    if state.is_complete_or_empty()
                        && now.saturating_sub(metadata.last_update_ms)
                            > self.config.id_expiration_ms =>
                {
                    expired.push(id.clone());
                }
                _ => {}
            }
        }
        for job in &jobs {
            self.in_flight.insert(job.transactional_id.clone());
        }
        for id in timed_out {
            tracing::info!(transactional_id = %id, "aborting a transaction that timed out");
            if let Ok(job) = self.prepare_end(&id, false, true, now, allocate) {
                jobs.push(job);
            }
        }
        for id in expired {
            self.txns.remove(&id);
            self.records.push(TxnRecord {
                transactional_id: id,
                value: None,
            });
        }
        jobs
    }
}

/// Moves the epoch on, or to a new producer ID at epoch 0 when it would overflow.
fn bump_epoch(metadata: &mut TxnMetadata, allocate: AllocateId<'_>) -> Result<(), ErrorCode> {
    if metadata.producer_epoch >= i16::MAX - 1 {
        metadata.previous_producer_id = metadata.producer_id;
        metadata.producer_id = allocate()?;
        metadata.producer_epoch = 0;
        metadata.last_producer_epoch = -1;
    } else {
        metadata.last_producer_epoch = metadata.producer_epoch;
        metadata.producer_epoch += 1;
    }
    Ok(())
}
