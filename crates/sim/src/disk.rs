//! A simulated node's disk: an in-memory file system that survives the node's crashes
//! except for what was never made durable.
//!
//! Each start of the node gets its own [`Incarnation`] of the disk. A crash ends it first:
//! from then on every operation through it fails, so nothing the dying node still holds
//! (a file handle in a task being torn down) can write after the power went. Then the
//! disk loses every byte and directory entry not yet synced.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spool_log::storage::{LockGuard, StorageFile};
use spool_log::{FilesystemSync, MemStorage, Storage};

/// One node's disk.
#[derive(Clone, Default)]
pub struct Disk {
    mem: MemStorage,
    current: Arc<std::sync::Mutex<Arc<AtomicBool>>>,
}

impl Disk {
    /// The disk as a new start of the node sees it.
    pub fn incarnation(&self) -> Arc<dyn Storage> {
        let alive = Arc::new(AtomicBool::new(true));
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&alive);
        Arc::new(Incarnation {
            mem: self.mem.clone(),
            alive,
        })
    }

    /// The power goes: the running incarnation stops reaching the disk, and what was not
    /// durable is lost.
    pub fn power_cut(&self) {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .store(false, Ordering::Release);
        self.mem.crash();
    }
}

struct Incarnation {
    mem: MemStorage,
    alive: Arc<AtomicBool>,
}

/// Fails once the incarnation the handle belongs to has ended.
fn check(alive: &AtomicBool) -> io::Result<()> {
    if alive.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(io::Error::other("simulated power cut"))
    }
}

struct File {
    inner: Arc<dyn StorageFile>,
    alive: Arc<AtomicBool>,
}

impl StorageFile for File {
    fn size_bytes(&self) -> io::Result<u64> {
        check(&self.alive)?;
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        check(&self.alive)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check(&self.alive)?;
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        check(&self.alive)?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        check(&self.alive)?;
        self.inner.set_len(len)
    }
}

impl Storage for Incarnation {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        check(&self.alive)?;
        Ok(Arc::new(File {
            inner: self.mem.open(path, create)?,
            alive: Arc::clone(&self.alive),
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        self.alive.load(Ordering::Acquire) && self.mem.exists(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        check(&self.alive)?;
        self.mem.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        check(&self.alive)?;
        self.mem.create_dir_all(dir)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        check(&self.alive)?;
        self.mem.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check(&self.alive)?;
        self.mem.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        check(&self.alive)?;
        self.mem.sync_dir(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        check(&self.alive)?;
        self.mem.remove_dir(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        check(&self.alive)?;
        self.mem.lock(path)
    }
    fn filesystem_sync(&self, _path: &Path) -> io::Result<Option<Box<dyn FilesystemSync>>> {
        Ok(None)
    }
}
