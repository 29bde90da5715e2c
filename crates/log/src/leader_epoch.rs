//! The leader-epoch cache: at which offset each leader epoch began writing.
//!
//! Replicas use it to find where their logs diverge after a leader change
//! (OffsetForLeaderEpoch): the end offset of epoch E is the start offset of the first
//! epoch after E. It is kept in `leader-epoch-checkpoint`, replaced atomically on every
//! change, in Kafka's text layout: a version line, a count line, then `epoch offset` lines.

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{Storage, read_whole, write_atomically};

pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// Kafka's "no epoch" and "no offset".
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug, Clone)]
pub struct LeaderEpochCache {
    path: PathBuf,
    /// Epochs and start offsets, both strictly increasing.
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Loads the cache of a partition folder; a missing or damaged file gives an empty
    /// cache (replication then truncates conservatively).
    pub fn load(storage: &dyn Storage, dir: &Path) -> LeaderEpochCache {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let entries = read_entries(storage, &path).unwrap_or_default();
        LeaderEpochCache { path, entries }
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` began at `start_offset`. Returns whether the cache changed;
    /// an epoch not newer than the latest, or an offset not after its start, is ignored.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if let Some(last) = self.entries.last()
            && (epoch <= last.epoch || start_offset < last.start_offset)
        {
            return false;
        }
        // A new epoch at the same offset replaces an epoch that never wrote anything.
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// The largest epoch at or below `epoch` and the offset where it ended, as
    /// OffsetForLeaderEpoch answers (Kafka's semantics, including the undefined cases).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> (i32, i64) {
        if epoch == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end_offset);
        }
        let Some(higher) = self.entries.iter().find(|e| e.epoch > epoch) else {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        };
        match self.entries.iter().rev().find(|e| e.epoch <= epoch) {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (epoch, higher.start_offset),
        }
    }

    /// Drops the epochs that started at or after `end_offset` (the log was truncated
    /// there). Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        self.entries.len() != before
    }

    /// Forgets every epoch (the log was emptied).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops the epochs wholly below `start_offset` and moves the first remaining one's
    /// start up to it (the log start offset advanced). Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let covering = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        let Some(index) = covering else {
            return false;
        };
        let changed = index > 0 || self.entries[0].start_offset != start_offset;
        self.entries.drain(..index);
        self.entries[0].start_offset = start_offset;
        changed
    }

    /// Writes the cache atomically.
    pub fn write(&self, storage: &dyn Storage) -> io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        write_atomically(storage, &self.path, text.as_bytes())
    }
}

fn read_entries(storage: &dyn Storage, path: &Path) -> Option<Vec<EpochEntry>> {
    let bytes = read_whole(storage, path, 1 << 20).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "0" {
        return None;
    }
    let count: usize = lines.next()?.parse().ok()?;
    let mut entries = Vec::with_capacity(count.min(1024));
    for line in lines.take(count) {
        let (epoch, offset) = line.split_once(' ')?;
        entries.push(EpochEntry {
            epoch: epoch.parse().ok()?,
            start_offset: offset.parse().ok()?,
        });
    }
    let ordered = entries
        .windows(2)
        .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
    (entries.len() == count && ordered).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache {
            path: PathBuf::from("/p/leader-epoch-checkpoint"),
            entries: Vec::new(),
        };
        for &(epoch, offset) in entries {
            assert!(cache.assign(epoch, offset));
        }
        cache
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let cache = cache(&[(1, 0), (3, 100), (5, 250)]);
        assert_eq!(
            cache.end_offset_for(5, 400),
            (5, 400),
            "the latest epoch ends at the log end"
        );
        assert_eq!(cache.end_offset_for(3, 400), (3, 250));
        assert_eq!(
            cache.end_offset_for(4, 400),
            (3, 250),
            "an unknown epoch answers with the one below"
        );
        assert_eq!(
            cache.end_offset_for(0, 400),
            (0, 0),
            "below every epoch: its own epoch, the first start"
        );
        assert_eq!(
            cache.end_offset_for(9, 400),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
        assert_eq!(
            cache.end_offset_for(UNDEFINED_EPOCH, 400),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
    }

    #[test]
    fn stale_epochs_are_ignored_and_an_empty_epoch_is_replaced() {
        let mut cache = cache(&[(1, 0), (2, 10)]);
        assert!(!cache.assign(1, 20), "an older epoch");
        assert!(!cache.assign(3, 5), "an offset before the latest start");
        assert!(
            cache.assign(3, 10),
            "epoch 2 never wrote: epoch 3 takes its place"
        );
        assert_eq!(
            cache.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 3,
                    start_offset: 10
                }
            ]
        );
    }

    #[test]
    fn truncation_from_either_end() {
        let mut cache = cache(&[(1, 0), (3, 100), (5, 250)]);
        assert!(cache.truncate_from_end(250));
        assert_eq!(cache.latest_epoch(), Some(3));
        assert!(cache.truncate_from_start(120));
        assert_eq!(
            cache.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 120
            }]
        );
        assert!(!cache.truncate_from_start(50), "nothing below the start");
    }

    #[test]
    fn the_checkpoint_round_trips_and_damage_means_empty() {
        let storage = MemStorage::new();
        let dir = Path::new("/p");
        let written = cache(&[(1, 0), (4, 77)]);
        written.write(&storage).unwrap();
        assert_eq!(
            LeaderEpochCache::load(&storage, dir).entries(),
            written.entries()
        );
        storage.set_contents(
            &dir.join(LEADER_EPOCH_CHECKPOINT_FILE),
            b"0\n2\n1 0\n".to_vec(),
        );
        assert!(
            LeaderEpochCache::load(&storage, dir).entries().is_empty(),
            "a short file is damage"
        );
    }
}
