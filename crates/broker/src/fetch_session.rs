//! Incremental fetch sessions (KIP-227).
//!
//! A client that asks for a session (epoch 0) gets a session ID in its full fetch
//! response. From then on it sends only the partitions whose fetch position or size
//! changed, plus a list of partitions to forget, and the broker answers only for
//! partitions with something new: records, an error, or a changed high watermark, last
//! stable offset or log start offset. Each request carries the next epoch; a stale or
//! repeated epoch is refused with INVALID_FETCH_SESSION_EPOCH, an unknown session with
//! FETCH_SESSION_ID_NOT_FOUND.
//!
//! The cache holds at most `max.incremental.fetch.session.cache.slots` sessions. When it
//! is full, a new session takes the slot of one idle for two minutes, or else of the
//! smallest session if that one has fewer partitions; otherwise the client is told to
//! keep sending full requests (session ID 0). Sessions are not tied to connections.
//!
//! This module is pure bookkeeping with the time passed in; `api::fetch` drives it.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use spool_protocol::{ErrorCode, Uuid};

/// "No session", in requests and responses.
pub const INVALID_SESSION_ID: i32 = 0;
/// A request's epoch asking for a new session.
pub const INITIAL_EPOCH: i32 = 0;
/// A request's epoch asking for no session.
pub const FINAL_EPOCH: i32 = -1;
/// Sessions unused this long may be evicted for a new one (Kafka's fixed value).
pub const EVICTION_MS: i64 = 120_000;

/// A partition as the request names it: by topic name before Fetch v13, by topic ID
/// (with an empty name) from v13.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
}

/// What the client wants from one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub key: PartitionKey,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    /// The leader epoch the client believes current; -1 when it does not say.
    pub current_leader_epoch: i32,
}

/// What the last response told the client about a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

impl Reported {
    const UNKNOWN: Reported = Reported {
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
    };
}

/// One partition's outcome in a response, as the session sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reported: Reported,
    pub has_records: bool,
    /// An error, or another replica to read from: always in the response.
    pub must_answer: bool,
}

struct Cached {
    fetch_offset: i64,
    partition_max_bytes: i32,
    current_leader_epoch: i32,
    reported: Reported,
}

struct Session {
    /// The epoch the next request must carry.
    epoch: i32,
    uses_topic_ids: bool,
    partitions: IndexMap<PartitionKey, Cached>,
    last_used_ms: i64,
}

/// How to answer one fetch request.
#[derive(Debug, PartialEq, Eq)]
pub enum Context {
    /// A full fetch answered with session ID 0.
    Sessionless,
    /// A full fetch whose response may open a session ([`FetchSessionCache::create`]).
    Full,
    /// An incremental fetch: read every partition of the session, in this order, and
    /// pass the outcomes to [`FetchSessionCache::finish`].
    Incremental { id: i32, partitions: Vec<Wanted> },
}

/// The epoch after `epoch`: it wraps to 1, never to the reserved 0 or -1.
pub fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

pub struct FetchSessionCache {
    sessions: BTreeMap<i32, Session>,
    max_slots: usize,
    next_id: Box<dyn FnMut() -> i32 + Send>,
}

impl FetchSessionCache {
    /// A cache of at most `max_slots` sessions whose IDs come from `ids` (any values;
    /// 0, negatives and IDs in use are skipped).
    pub fn new(max_slots: usize, ids: Box<dyn FnMut() -> i32 + Send>) -> Self {
        FetchSessionCache {
            sessions: BTreeMap::new(),
            max_slots,
            next_id: ids,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Reads a request's session fields. `wanted` are the request's partitions and
    /// `forgotten` its forgotten topics; incremental requests update the session with both.
    pub fn begin(
        &mut self,
        session_id: i32,
        epoch: i32,
        uses_topic_ids: bool,
        wanted: Vec<Wanted>,
        forgotten: Vec<PartitionKey>,
        now_ms: i64,
    ) -> Result<Context, ErrorCode> {
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            // A full request closes the session it names.
            self.sessions.remove(&session_id);
            return Ok(if epoch == FINAL_EPOCH {
                Context::Sessionless
            } else {
                Context::Full
            });
        }
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or(ErrorCode::FetchSessionIdNotFound)?;
        if session.epoch != epoch {
            return Err(ErrorCode::InvalidFetchSessionEpoch);
        }
        if session.uses_topic_ids != uses_topic_ids {
            return Err(ErrorCode::FetchSessionTopicIdError);
        }
        for w in wanted {
            match session.partitions.get_mut(&w.key) {
                Some(cached) => {
                    cached.fetch_offset = w.fetch_offset;
                    cached.partition_max_bytes = w.partition_max_bytes;
                    cached.current_leader_epoch = w.current_leader_epoch;
                }
                None => {
                    session.partitions.insert(
                        w.key,
                        Cached {
                            fetch_offset: w.fetch_offset,
                            partition_max_bytes: w.partition_max_bytes,
                            current_leader_epoch: w.current_leader_epoch,
                            reported: Reported::UNKNOWN,
                        },
                    );
                }
            }
        }
        for key in &forgotten {
            session.partitions.shift_remove(key);
        }
        session.epoch = next_epoch(epoch);
        session.last_used_ms = now_ms;
        let partitions = session
            .partitions
            .iter()
            .map(|(key, cached)| Wanted {
                key: key.clone(),
                fetch_offset: cached.fetch_offset,
                partition_max_bytes: cached.partition_max_bytes,
                current_leader_epoch: cached.current_leader_epoch,
            })
            .collect();
        Ok(Context::Incremental {
            id: session_id,
            partitions,
        })
    }

    /// Opens a session for a full fetch that asked for one, remembering what its response
    /// reported. Returns the new session's ID, or [`INVALID_SESSION_ID`] when no slot
    /// could be had.
    pub fn create(
        &mut self,
        uses_topic_ids: bool,
        partitions: Vec<(Wanted, Reported)>,
        now_ms: i64,
    ) -> i32 {
        if self.sessions.len() >= self.max_slots && !self.evict_for(partitions.len(), now_ms) {
            return INVALID_SESSION_ID;
        }
        let id = loop {
            let id = (self.next_id)();
            if id > 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let partitions = partitions
            .into_iter()
            .map(|(w, reported)| {
                (
                    w.key,
                    Cached {
                        fetch_offset: w.fetch_offset,
                        partition_max_bytes: w.partition_max_bytes,
                        current_leader_epoch: w.current_leader_epoch,
                        reported,
                    },
                )
            })
            .collect();
        self.sessions.insert(
            id,
            Session {
                epoch: next_epoch(INITIAL_EPOCH),
                uses_topic_ids,
                partitions,
                last_used_ms: now_ms,
            },
        );
        id
    }

    /// Makes room for a session of `size` partitions: the longest-idle session past
    /// [`EVICTION_MS`] goes first, else the smallest session if it is smaller.
    fn evict_for(&mut self, size: usize, now_ms: i64) -> bool {
        let stale = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_used_ms) >= EVICTION_MS)
            .min_by_key(|(_, s)| s.last_used_ms)
            .map(|(id, _)| *id);
        let victim = stale.or_else(|| {
            self.sessions
                .iter()
                .filter(|(_, s)| s.partitions.len() < size)
                .min_by_key(|(_, s)| (s.partitions.len(), s.last_used_ms))
                .map(|(id, _)| *id)
        });
        match victim {
            Some(id) => self.sessions.remove(&id).is_some(),
            None => false,
        }
    }

    /// Decides which partitions an incremental response carries: those with records, an
    /// error or a preferred read replica, or a changed high watermark, last stable offset
    /// or log start offset. Those move to the back of the session, so partitions left out
    /// get the response's byte budget first next time. Returns one flag per outcome, in
    /// order, or `None` when the session is gone (evicted meanwhile): then the response
    /// carries everything and session ID 0.
    pub fn finish(&mut self, id: i32, outcomes: &[(PartitionKey, Outcome)]) -> Option<Vec<bool>> {
        let session = self.sessions.get_mut(&id)?;
        let mut keep = Vec::with_capacity(outcomes.len());
        for (key, outcome) in outcomes {
            let Some(index) = session.partitions.get_index_of(key) else {
                keep.push(false);
                continue;
            };
            let cached = &mut session.partitions[index];
            let include =
                outcome.has_records || outcome.must_answer || cached.reported != outcome.reported;
            cached.reported = outcome.reported;
            if include {
                let last = session.partitions.len() - 1;
                session.partitions.move_index(index, last);
            }
            keep.push(include);
        }
        Some(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        PartitionKey {
            topic: "t".into(),
            topic_id: Uuid::default(),
            partition,
        }
    }

    fn wanted(partition: i32, offset: i64) -> Wanted {
        Wanted {
            key: key(partition),
            fetch_offset: offset,
            partition_max_bytes: 1024,
            current_leader_epoch: -1,
        }
    }

    fn reported(hw: i64) -> Reported {
        Reported {
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
        }
    }

    fn outcome(hw: i64, has_records: bool) -> Outcome {
        Outcome {
            reported: reported(hw),
            has_records,
            must_answer: false,
        }
    }

    fn cache(slots: usize) -> FetchSessionCache {
        let mut n = 0;
        FetchSessionCache::new(
            slots,
            Box::new(move || {
                n += 1;
                n
            }),
        )
    }

    fn open(cache: &mut FetchSessionCache, partitions: &[i32], now: i64) -> i32 {
        assert_eq!(
            cache.begin(0, INITIAL_EPOCH, false, Vec::new(), Vec::new(), now),
            Ok(Context::Full)
        );
        let partitions = partitions
            .iter()
            .map(|&p| (wanted(p, 0), reported(10)))
            .collect();
        cache.create(false, partitions, now)
    }

    fn incremental(context: Result<Context, ErrorCode>) -> Vec<Wanted> {
        match context {
            Ok(Context::Incremental { partitions, .. }) => partitions,
            other => panic!("expected an incremental context, got {other:?}"),
        }
    }

    #[test]
    fn epochs_advance_and_a_repeated_or_unknown_one_is_refused() {
        let mut cache = cache(10);
        let id = open(&mut cache, &[0, 1], 0);
        assert!(id > 0);
        assert_eq!(
            incremental(cache.begin(id, 1, false, vec![], vec![], 1)).len(),
            2
        );
        assert_eq!(
            cache.begin(id, 1, false, vec![], vec![], 2),
            Err(ErrorCode::InvalidFetchSessionEpoch)
        );
        assert_eq!(
            incremental(cache.begin(id, 2, false, vec![], vec![], 3)).len(),
            2
        );
        assert_eq!(
            cache.begin(id + 1, 3, false, vec![], vec![], 4),
            Err(ErrorCode::FetchSessionIdNotFound)
        );
        assert_eq!(
            cache.begin(id, 3, true, vec![], vec![], 5),
            Err(ErrorCode::FetchSessionTopicIdError)
        );
        assert_eq!(next_epoch(i32::MAX), 1);
    }

    #[test]
    fn a_full_request_closes_the_session_it_names() {
        let mut cache = cache(10);
        let id = open(&mut cache, &[0], 0);
        assert_eq!(
            cache.begin(id, FINAL_EPOCH, false, vec![], vec![], 1),
            Ok(Context::Sessionless)
        );
        assert!(cache.is_empty());
        assert_eq!(
            cache.begin(id, 1, false, vec![], vec![], 2),
            Err(ErrorCode::FetchSessionIdNotFound)
        );
    }

    #[test]
    fn requests_add_update_and_forget_partitions() {
        let mut cache = cache(10);
        let id = open(&mut cache, &[0, 1], 0);
        let partitions = incremental(cache.begin(
            id,
            1,
            false,
            vec![wanted(1, 7), wanted(2, 3)],
            vec![key(0)],
            1,
        ));
        assert_eq!(partitions, vec![wanted(1, 7), wanted(2, 3)]);
    }

    #[test]
    fn only_changed_partitions_are_answered_and_move_to_the_back() {
        let mut cache = cache(10);
        let id = open(&mut cache, &[0, 1, 2], 0);
        incremental(cache.begin(id, 1, false, vec![], vec![], 1));
        let outcomes = [
            (key(0), outcome(10, true)),  // records
            (key(1), outcome(10, false)), // nothing new
            (key(2), outcome(11, false)), // high watermark moved
        ];
        assert_eq!(cache.finish(id, &outcomes), Some(vec![true, false, true]));
        let order: Vec<i32> = incremental(cache.begin(id, 2, false, vec![], vec![], 2))
            .iter()
            .map(|w| w.key.partition)
            .collect();
        assert_eq!(order, vec![1, 0, 2]);
        // The new high watermark was remembered: unchanged now, so left out.
        let outcomes = [
            (key(0), outcome(10, false)),
            (key(1), outcome(10, false)),
            (key(2), outcome(11, false)),
        ];
        assert_eq!(cache.finish(id, &outcomes), Some(vec![false, false, false]));
        let error = Outcome {
            must_answer: true,
            ..outcome(10, false)
        };
        assert_eq!(cache.finish(id, &[(key(0), error)]), Some(vec![true]));
        assert_eq!(cache.finish(id + 1, &[]), None);
    }

    #[test]
    fn a_full_cache_evicts_idle_then_smaller_sessions() {
        let mut cache = cache(2);
        let a = open(&mut cache, &[0, 1, 2], 0);
        let b = open(&mut cache, &[0], 1_000);
        // Neither is idle long enough, and none is smaller than a 1-partition session.
        assert_eq!(open(&mut cache, &[0], 2_000), INVALID_SESSION_ID);
        // A larger session takes the smallest one's slot.
        let c = open(&mut cache, &[0, 1], 3_000);
        assert!(c > 0);
        assert_eq!(
            cache.begin(b, 1, false, vec![], vec![], 4_000),
            Err(ErrorCode::FetchSessionIdNotFound)
        );
        // Once `a` has been idle for two minutes, anyone may take its slot.
        let d = open(&mut cache, &[0], EVICTION_MS);
        assert!(d > 0);
        assert_eq!(
            cache.begin(a, 1, false, vec![], vec![], EVICTION_MS),
            Err(ErrorCode::FetchSessionIdNotFound)
        );
        assert_eq!(cache.len(), 2);
        assert_eq!(
            FetchSessionCache::new(0, Box::new(|| 1)).create(false, vec![], 0),
            0
        );
    }
}
