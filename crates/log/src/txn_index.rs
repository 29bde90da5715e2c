//! A segment's aborted-transaction index, `<base offset>.txnindex`, as Kafka keeps it: one
//! entry per transaction whose abort marker lies in the segment, giving the producer, the
//! transaction's first offset and the marker's offset. A read_committed fetch returns the
//! entries its records overlap, so the client drops the aborted records.
//!
//! Entries are 34 bytes: version (2), producer ID (8), first offset (8), last offset (8)
//! and the last stable offset once the transaction ended (8). The file is created with the
//! first entry and kept whole in memory. Like the other indexes it is a cache of the log:
//! entries above the offset the producer state is replayed from are dropped at open and
//! derived again from the markers, so a torn or lost tail costs nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{Storage, StorageFile, read_exact_at};

/// The suffix of aborted-transaction index files.
pub const TXN_INDEX_SUFFIX: &str = "txnindex";
const ENTRY_BYTES: usize = 34;
const ENTRY_VERSION: i16 = 0;

/// A transaction that was aborted: its records lie in `first_offset..last_offset`, the
/// last offset being its abort marker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The partition's last stable offset once the transaction ended.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<AbortedTxn> {
        let field = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
        };
        let version = i16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?);
        let entry = AbortedTxn {
            producer_id: field(2)?,
            first_offset: field(10)?,
            last_offset: field(18)?,
            last_stable_offset: field(26)?,
        };
        (version == ENTRY_VERSION && entry.first_offset <= entry.last_offset).then_some(entry)
    }
}

pub struct TxnIndex {
    path: PathBuf,
    /// Absent until the first entry.
    file: Option<Arc<dyn StorageFile>>,
    entries: Vec<AbortedTxn>,
}

impl TxnIndex {
    /// The index file's path for the segment at `base_offset`.
    pub fn path(dir: &Path, base_offset: i64) -> PathBuf {
        dir.join(format!("{base_offset:020}.{TXN_INDEX_SUFFIX}"))
    }

    /// Opens the index if its file exists. Entries that do not decode, and anything after
    /// them, are dropped.
    pub fn open(storage: &dyn Storage, path: PathBuf) -> io::Result<TxnIndex> {
        let mut index = TxnIndex {
            path,
            file: None,
            entries: Vec::new(),
        };
        if !storage.exists(&index.path) {
            return Ok(index);
        }
        let file = storage.open(&index.path, false)?;
        let len = file.size_bytes()? as usize;
        let mut bytes = vec![0u8; len - len % ENTRY_BYTES];
        read_exact_at(file.as_ref(), &mut bytes, 0)?;
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            match AbortedTxn::decode(chunk) {
                Some(entry) => index.entries.push(entry),
                None => break,
            }
        }
        if index.entries.len() * ENTRY_BYTES != len {
            file.set_len((index.entries.len() * ENTRY_BYTES) as u64)?;
        }
        index.file = Some(file);
        Ok(index)
    }

    pub fn entries(&self) -> &[AbortedTxn] {
        &self.entries
    }

    /// Adds an entry (in marker order), creating the file with the first one.
    pub fn append(&mut self, storage: &dyn Storage, entry: AbortedTxn) -> io::Result<()> {
        let file = match &self.file {
            Some(file) => Arc::clone(file),
            None => {
                let file = storage.open(&self.path, true)?;
                file.set_len(0)?;
                self.file = Some(Arc::clone(&file));
                file
            }
        };
        file.write_at(&entry.encode(), (self.entries.len() * ENTRY_BYTES) as u64)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Drops the entries whose marker is at or after `offset`.
    pub fn truncate_from(&mut self, offset: i64) -> io::Result<()> {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        if let Some(file) = &self.file {
            file.set_len((keep * ENTRY_BYTES) as u64)?;
        }
        Ok(())
    }

    /// Writes `entries` to a new file at `path` (replacing any) and makes it durable: the
    /// index a cleaned segment takes with it.
    pub fn write_file(
        storage: &dyn Storage,
        path: &Path,
        entries: &[AbortedTxn],
    ) -> io::Result<()> {
        let file = storage.open(path, true)?;
        file.set_len(0)?;
        let bytes: Vec<u8> = entries.iter().flat_map(AbortedTxn::encode).collect();
        file.write_at(&bytes, 0)?;
        file.sync_data()
    }

    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn entry(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: last_offset + 1,
        }
    }

    #[test]
    fn entries_persist_truncate_and_a_torn_tail_is_dropped() {
        let storage = MemStorage::new();
        let dir = Path::new("/p");
        storage.create_dir_all(dir).unwrap();
        let path = TxnIndex::path(dir, 100);
        let mut index = TxnIndex::open(&storage, path.clone()).unwrap();
        assert!(index.entries().is_empty() && !storage.exists(&path));
        for (pid, first, last) in [(1, 100, 105), (2, 101, 110), (1, 111, 120)] {
            index.append(&storage, entry(pid, first, last)).unwrap();
        }
        let reopened = TxnIndex::open(&storage, path.clone()).unwrap();
        assert_eq!(reopened.entries(), index.entries());

        index.truncate_from(110).unwrap();
        let reopened = TxnIndex::open(&storage, path.clone()).unwrap();
        assert_eq!(reopened.entries(), &[entry(1, 100, 105)]);

        // A torn entry at the end goes; so does a damaged one and all after it.
        let file = storage.open(&path, false).unwrap();
        file.write_at(&entry(3, 1, 2).encode()[..20], ENTRY_BYTES as u64)
            .unwrap();
        let reopened = TxnIndex::open(&storage, path.clone()).unwrap();
        assert_eq!(reopened.entries().len(), 1);
        assert_eq!(file.size_bytes().unwrap(), ENTRY_BYTES as u64);
        file.write_at(&[0xff, 0xff], 0).unwrap();
        assert!(TxnIndex::open(&storage, path).unwrap().entries().is_empty());
    }
}
