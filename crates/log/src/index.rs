//! Sparse indexes beside each segment: the offset index (`.index`, offset → file position)
//! and the time index (`.timeindex`, timestamp → offset).
//!
//! An index holds one entry every `index.interval.bytes` of log, so a lookup lands near the
//! wanted batch and a short scan finishes the job. Entries live in memory and are appended
//! to the index file as they are made; the file is only a cache of what the log itself
//! says. At open an index whose file is damaged (a size that is not a whole number of
//! entries, keys that do not increase, positions beyond the log) is thrown away and rebuilt
//! from the log.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::storage::{Storage, StorageFile, read_exact_at};

/// One kind of index entry.
pub trait IndexEntry: Copy + std::fmt::Debug + PartialEq {
    const SIZE: usize;
    /// What lookups search by; strictly increasing along the index.
    fn key(&self) -> i64;
    fn encode(&self, base_offset: i64) -> Vec<u8>;
    fn decode(bytes: &[u8], base_offset: i64) -> Self;
}

/// Offset index entry: the batch whose last offset is `offset` starts at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub offset: i64,
    pub position: u32,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 8;

    fn key(&self) -> i64 {
        self.offset
    }

    fn encode(&self, base_offset: i64) -> Vec<u8> {
        // Offsets are stored relative to the segment's base offset, as Kafka does.
        let relative = (self.offset - base_offset) as u32;
        [relative.to_be_bytes(), self.position.to_be_bytes()].concat()
    }

    fn decode(bytes: &[u8], base_offset: i64) -> Self {
        let relative = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let position = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        OffsetEntry {
            offset: base_offset + i64::from(relative),
            position,
        }
    }
}

/// Time index entry: the largest timestamp seen so far in the segment, and the last offset
/// of the batch that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub offset: i64,
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;

    fn key(&self) -> i64 {
        self.timestamp
    }

    fn encode(&self, base_offset: i64) -> Vec<u8> {
        let relative = (self.offset - base_offset) as u32;
        [
            &self.timestamp.to_be_bytes()[..],
            &relative.to_be_bytes()[..],
        ]
        .concat()
    }

    fn decode(bytes: &[u8], base_offset: i64) -> Self {
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&bytes[..8]);
        let relative = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        TimeEntry {
            timestamp: i64::from_be_bytes(timestamp),
            offset: base_offset + i64::from(relative),
        }
    }
}

/// A sparse index of one segment.
pub struct SparseIndex<E: IndexEntry> {
    base_offset: i64,
    entries: Vec<E>,
    max_entries: usize,
    file: Arc<dyn StorageFile>,
}

impl<E: IndexEntry> SparseIndex<E> {
    /// Opens (or creates) an index file. Returns the index and whether its contents could
    /// be trusted; an untrusted index comes back empty, to be rebuilt from the log.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        base_offset: i64,
        max_entries: usize,
        valid: impl Fn(&E) -> bool,
    ) -> io::Result<(Self, bool)> {
        let file = storage.open(path, true)?;
        let len = file.size_bytes()? as usize;
        let mut index = SparseIndex {
            base_offset,
            entries: Vec::new(),
            max_entries,
            file,
        };
        if !len.is_multiple_of(E::SIZE) || len / E::SIZE > max_entries {
            index.reset()?;
            return Ok((index, false));
        }
        let mut bytes = vec![0u8; len];
        read_exact_at(index.file.as_ref(), &mut bytes, 0)?;
        let entries: Vec<E> = bytes
            .chunks_exact(E::SIZE)
            .map(|c| E::decode(c, base_offset))
            .collect();
        let increasing = entries.windows(2).all(|w| w[0].key() < w[1].key());
        if !increasing || !entries.iter().all(&valid) {
            index.reset()?;
            return Ok((index, false));
        }
        index.entries = entries;
        Ok((index, true))
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn last(&self) -> Option<E> {
        self.entries.last().copied()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Appends an entry whose key is larger than every key in the index.
    pub fn append(&mut self, entry: E) -> io::Result<()> {
        assert!(
            self.last().is_none_or(|last| last.key() < entry.key()),
            "index keys must increase: {:?} after {:?}",
            entry,
            self.last()
        );
        if self.is_full() {
            return Ok(());
        }
        let position = (self.entries.len() * E::SIZE) as u64;
        self.file
            .write_at(&entry.encode(self.base_offset), position)?;
        self.entries.push(entry);
        Ok(())
    }

    /// The last entry whose key is at most `key`.
    pub fn floor(&self, key: i64) -> Option<E> {
        let after = self.entries.partition_point(|e| e.key() <= key);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops the entries for which `keep` is false from the end of the index.
    pub fn truncate_while(&mut self, keep: impl Fn(&E) -> bool) -> io::Result<()> {
        let len = self.entries.partition_point(|e| keep(e));
        self.entries.truncate(len);
        self.file.set_len((len * E::SIZE) as u64)
    }

    pub fn reset(&mut self) -> io::Result<()> {
        self.entries.clear();
        self.file.set_len(0)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn open(storage: &MemStorage) -> (SparseIndex<OffsetEntry>, bool) {
        SparseIndex::open(
            storage,
            Path::new("/p/0.index"),
            100,
            4,
            |e: &OffsetEntry| e.position < 10_000,
        )
        .unwrap()
    }

    #[test]
    fn floor_lookup_finds_the_nearest_entry_at_or_before() {
        let storage = MemStorage::new();
        let (mut index, _) = open(&storage);
        for (offset, position) in [(110, 0), (120, 4096), (130, 8192)] {
            index.append(OffsetEntry { offset, position }).unwrap();
        }
        assert_eq!(index.floor(105), None);
        assert_eq!(index.floor(120).map(|e| e.position), Some(4096));
        assert_eq!(index.floor(129).map(|e| e.position), Some(4096));
        assert_eq!(index.floor(1_000).map(|e| e.position), Some(8192));
    }

    #[test]
    fn entries_survive_reopening_and_truncation_is_persistent() {
        let storage = MemStorage::new();
        let (mut index, _) = open(&storage);
        for (offset, position) in [(110, 0), (120, 4096), (130, 8192)] {
            index.append(OffsetEntry { offset, position }).unwrap();
        }
        index.truncate_while(|e| e.offset < 125).unwrap();
        let (reopened, valid) = open(&storage);
        assert!(valid);
        assert_eq!(
            reopened.entries(),
            &[
                OffsetEntry {
                    offset: 110,
                    position: 0
                },
                OffsetEntry {
                    offset: 120,
                    position: 4096
                }
            ]
        );
    }

    #[test]
    fn a_damaged_index_file_is_reported_and_emptied() {
        let storage = MemStorage::new();
        let (mut index, _) = open(&storage);
        index
            .append(OffsetEntry {
                offset: 110,
                position: 0,
            })
            .unwrap();
        let path = Path::new("/p/0.index");
        let mut bytes = storage.contents(path).unwrap();
        bytes.push(0); // no longer a whole number of entries
        storage.set_contents(path, bytes);
        let (reopened, valid) = open(&storage);
        assert!(!valid);
        assert!(reopened.entries().is_empty());
        // Positions beyond the log are damage too.
        let (mut index, _) = open(&storage);
        index
            .append(OffsetEntry {
                offset: 110,
                position: 50_000,
            })
            .unwrap();
        assert!(!open(&storage).1);
    }

    #[test]
    fn time_entries_round_trip_relative_offsets() {
        let entry = TimeEntry {
            timestamp: 1_700_000_000_123,
            offset: 5_000_000_042,
        };
        assert_eq!(
            TimeEntry::decode(&entry.encode(5_000_000_000), 5_000_000_000),
            entry
        );
    }
}
