//! The seam between the log and the file system.
//!
//! Every byte the log reads or writes goes through [`Storage`] and [`StorageFile`], so
//! tests can swap the disk for [`MemStorage`]: an in-memory file system that injects I/O
//! errors, full disks and short writes, and can simulate a power cut that throws away
//! everything not yet made durable.
//!
//! What an implementation must guarantee (the log's durability rests on it):
//! - `write_at` either writes all of `buf` or returns an error; after an error, any prefix
//!   of `buf` may have been written (a short write), and the log treats the file's tail as
//!   unknown until it is truncated.
//! - Bytes are durable only after `sync_data` on their file returns `Ok`. A failed
//!   `sync_data` leaves durability unknown; callers must not retry and carry on as if it
//!   had worked.
//! - A created, renamed or removed directory entry is durable only after `sync_dir` on its
//!   directory returns `Ok`.
//! - `rename` replaces the target atomically: after a crash, the target is either the old
//!   file or the new one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One open file.
pub trait StorageFile: Send + Sync {
    fn size_bytes(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, or fails (see the module's guarantees).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's contents durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A file system.
pub trait Storage: Send + Sync {
    /// Opens a file, creating it (empty) when `create` is set and it does not exist.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    fn exists(&self, path: &Path) -> bool;
    /// The names of the entries of a directory, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if absent) for as long as the guard
    /// lives; fails with `WouldBlock` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>>;
    /// A handle that makes everything written to the file system holding `path` durable
    /// in one call, or `None` where the storage cannot (callers then sync file by file).
    /// Open it before writing: it reports write-back errors from then on.
    fn filesystem_sync(&self, path: &Path) -> io::Result<Option<Box<dyn FilesystemSync>>> {
        let _ = path;
        Ok(None)
    }
}

/// Makes a whole file system durable at once: file data and directory entries alike, as
/// [`StorageFile::sync_data`] on every file and [`Storage::sync_dir`] on every directory
/// would. An error means some write-back since the last call failed, on any file.
pub trait FilesystemSync: Send + Sync {
    fn sync(&self) -> io::Result<()>;
    /// About how many bytes a [`Self::sync`] would write back now, when known: dirty
    /// pages of every file, ours or not (an upper bound; it may count other file systems).
    fn pending_bytes(&self) -> Option<u64> {
        None
    }
}

/// `syncfs(2)` through a directory handle kept open. Linux reports write-back errors to
/// `syncfs` from version 5.8.
#[cfg(target_os = "linux")]
struct Syncfs(File);

#[cfg(target_os = "linux")]
impl FilesystemSync for Syncfs {
    fn sync(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.0).map_err(io::Error::from)
    }

    /// The system's dirty and under-write-back memory (`/proc/meminfo`).
    fn pending_bytes(&self) -> Option<u64> {
        let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Some((kib("Dirty:")? + kib("Writeback:")?) * 1024)
    }
}

/// Holds a lock taken with [`Storage::lock`] until dropped.
pub trait LockGuard: Send + Sync {}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_exact_at(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Removes a folder and the files in it (a partition's folder has no subfolders).
pub fn remove_dir_with_files(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    for name in storage.list(dir)? {
        storage.remove_file(&dir.join(name))?;
    }
    storage.remove_dir(dir)
}

/// Reads a small file whole: at most its first `max_bytes`.
pub fn read_whole(storage: &dyn Storage, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = storage.open(path, false)?;
    let mut bytes = vec![0u8; file.size_bytes()?.min(max_bytes) as usize];
    read_exact_at(file.as_ref(), &mut bytes, 0)?;
    Ok(bytes)
}

/// Replaces `path` atomically with `contents`: write a temporary file, make it durable,
/// rename it over `path`, then make the rename durable.
pub fn write_atomically(storage: &dyn Storage, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp_name = path.as_os_str().to_os_string();
    temp_name.push(".tmp");
    let temp = PathBuf::from(temp_name);
    let file = storage.open(&temp, true)?;
    file.set_len(0)?;
    file.write_at(contents, 0)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&temp, path)?;
    storage.sync_dir(dir)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStorage;

struct DiskFile(File);

impl StorageFile for DiskFile {
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for DiskStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn filesystem_sync(&self, path: &Path) -> io::Result<Option<Box<dyn FilesystemSync>>> {
        Ok(Some(Box::new(Syncfs(File::open(path)?))))
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(DiskLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// An OS file lock, released when the file is closed.
struct DiskLock {
    _file: File,
}

impl LockGuard for DiskLock {}

/// Faults [`MemStorage`] injects, set with [`MemStorage::set_faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Writes fail with "no space left" once this many more bytes have been written; the
    /// write that crosses the limit writes the bytes that fit (a short write).
    pub space_left_bytes: Option<u64>,
    /// Every `write_at` fails with EIO, writing nothing.
    pub fail_writes: bool,
    /// Every `sync_data` and `sync_dir` fails with EIO.
    pub fail_syncs: bool,
    /// Every `sync_data` takes this long, like a real disk's flush.
    pub sync_delay: Option<std::time::Duration>,
    /// This many more writes succeed; every later one fails with EIO (to stop a process
    /// at a chosen point before a simulated crash).
    pub writes_until_error: Option<u64>,
}

#[derive(Default)]
struct MemFileData {
    data: Vec<u8>,
    /// The contents as of the last successful `sync_data`.
    durable: Vec<u8>,
}

type MemNode = Arc<Mutex<MemFileData>>;

#[derive(Default)]
struct MemState {
    /// Directory entries as they are now.
    files: BTreeMap<PathBuf, MemNode>,
    dirs: Vec<PathBuf>,
    locks: Vec<PathBuf>,
    /// Directory entries as of each directory's last `sync_dir`.
    durable_files: BTreeMap<PathBuf, MemNode>,
    faults: Faults,
}

/// An in-memory file system with fault injection and simulated power cuts, for tests.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this one's result.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct MemFile {
    node: MemNode,
    state: Arc<Mutex<MemState>>,
}

impl StorageFile for MemFile {
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(lock(&self.node).data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let file = lock(&self.node);
        let start = (offset as usize).min(file.data.len());
        let n = buf.len().min(file.data.len() - start);
        buf[..n].copy_from_slice(&file.data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let allowed = {
            let mut state = lock(&self.state);
            if state.faults.fail_writes {
                return Err(io::Error::other("injected write error"));
            }
            if let Some(left) = state.faults.writes_until_error.as_mut() {
                if *left == 0 {
                    return Err(io::Error::other("injected write error"));
                }
                *left -= 1;
            }
            match state.faults.space_left_bytes.as_mut() {
                None => buf.len(),
                Some(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    n as usize
                }
            }
        };
        let mut file = lock(&self.node);
        let end = offset as usize + allowed;
        if file.data.len() < end {
            file.data.resize(end, 0);
        }
        file.data[offset as usize..end].copy_from_slice(&buf[..allowed]);
        if allowed < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let faults = lock(&self.state).faults.clone();
        if faults.fail_syncs {
            return Err(io::Error::other("injected fsync error"));
        }
        if let Some(delay) = faults.sync_delay {
            std::thread::sleep(delay);
        }
        let mut file = lock(&self.node);
        file.durable = file.data.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.node).data.resize(len as usize, 0);
        Ok(())
    }
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Simulates a power cut: every file reverts to its last synced contents and every
    /// directory to its last synced entries. Open handles keep working on the reverted
    /// files, as after a restart nobody holds the old ones.
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        state.files = state.durable_files.clone();
        for node in state.files.values() {
            let mut file = lock(node);
            file.data = file.durable.clone();
        }
        state.faults = Faults::default();
        state.locks.clear();
    }

    /// The current contents of a file, for tests that corrupt or inspect files.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.state)
            .files
            .get(path)
            .map(|node| lock(node).data.clone())
    }

    /// Sets the contents of a file (durably), creating it, for tests that corrupt files or
    /// stage what a crash leaves behind.
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let node = Arc::clone(
            lock(&self.state)
                .files
                .entry(path.to_path_buf())
                .or_default(),
        );
        let mut file = lock(&node);
        file.durable = data.clone();
        file.data = data;
    }
}

struct MemLock {
    path: PathBuf,
    state: Arc<Mutex<MemState>>,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        lock(&self.state).locks.retain(|l| l != &self.path);
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Storage for MemStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = lock(&self.state);
        let node = match state.files.get(path) {
            Some(node) => Arc::clone(node),
            None if create => {
                let node = MemNode::default();
                state.files.insert(path.to_path_buf(), Arc::clone(&node));
                node
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(MemFile {
            node,
            state: Arc::clone(&self.state),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let state = lock(&self.state);
        state.files.contains_key(path) || state.dirs.iter().any(|d| d == path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        let mut names: Vec<String> = state
            .files
            .keys()
            .chain(state.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if !state.dirs.iter().any(|d| d == dir) {
            state.dirs.push(dir.to_path_buf());
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        lock(&self.state)
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let node = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.files.keys().any(|p| p.starts_with(dir)) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", dir.display()),
            ));
        }
        state.dirs.retain(|d| d != dir);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let mut state = lock(&self.state);
        if state.locks.iter().any(|l| l == path) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        state.locks.push(path.to_path_buf());
        Ok(Box::new(MemLock {
            path: path.to_path_buf(),
            state: Arc::clone(&self.state),
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.faults.fail_syncs {
            return Err(io::Error::other("injected fsync error"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        state.durable_files.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, MemNode)> = state
            .files
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, n)| (p.clone(), Arc::clone(n)))
            .collect();
        state.durable_files.extend(current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_only_synced_bytes_and_synced_entries() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        let a = storage.open(&dir.join("a"), true).unwrap();
        a.write_at(b"durable", 0).unwrap();
        a.sync_data().unwrap();
        storage.sync_dir(dir).unwrap();
        a.write_at(b" and lost", 7).unwrap();
        let b = storage.open(&dir.join("b"), true).unwrap();
        b.write_at(b"synced file, unsynced entry", 0).unwrap();
        b.sync_data().unwrap();

        storage.crash();

        assert_eq!(storage.contents(&dir.join("a")).unwrap(), b"durable");
        assert!(
            !storage.exists(&dir.join("b")),
            "an entry never made durable is gone"
        );
    }

    #[test]
    fn a_full_disk_writes_what_fits_then_fails() {
        let storage = MemStorage::new();
        let file = storage.open(Path::new("/f"), true).unwrap();
        storage.set_faults(Faults {
            space_left_bytes: Some(4),
            ..Faults::default()
        });
        let err = file.write_at(b"abcdefgh", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(storage.contents(Path::new("/f")).unwrap(), b"abcd");
    }

    #[test]
    fn atomic_replacement_survives_a_crash_whole() {
        let storage = MemStorage::new();
        let path = Path::new("/d/checkpoint");
        write_atomically(&storage, path, b"one").unwrap();
        write_atomically(&storage, path, b"two").unwrap();
        storage.crash();
        assert_eq!(storage.contents(path).unwrap(), b"two");
    }

    #[test]
    fn a_disk_lock_refuses_a_second_holder_until_released() {
        let dir = std::env::temp_dir().join(format!("spool-lock-test-{}", std::process::id()));
        DiskStorage.create_dir_all(&dir).unwrap();
        let path = dir.join(".lock");
        let held = DiskStorage.lock(&path).unwrap();
        assert_eq!(
            DiskStorage.lock(&path).err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        drop(held);
        assert!(DiskStorage.lock(&path).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_storage_reads_back_what_it_wrote() {
        let dir = std::env::temp_dir().join(format!("spool-storage-test-{}", std::process::id()));
        DiskStorage.create_dir_all(&dir).unwrap();
        let path = dir.join("x");
        write_atomically(&DiskStorage, &path, b"hello").unwrap();
        let file = DiskStorage.open(&path, false).unwrap();
        let mut buf = [0u8; 5];
        read_exact_at(file.as_ref(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(DiskStorage.list(&dir).unwrap(), vec!["x".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
