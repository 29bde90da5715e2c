//! Log engine throughput and recovery report, on the real disk.
//!
//! `cargo bench -p spool-log --bench log_throughput` prints one line per measurement. It
//! writes under `SPOOL_BENCH_DIR` (default: the system temp dir) and removes what it wrote.
//! `SPOOL_BENCH_LOG_MB` sets the size of the log used for appends, reads and opens
//! (default 1024); `SPOOL_BENCH_FSYNC_APPENDS` the number of fsynced appends (default 2000).
//! Every loop is bounded in count.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed setup is a failed run

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_log::log::CLEAN_SHUTDOWN_FILE;
use spool_log::{DiskStorage, LogConfig, PartitionLog, SharedLog};
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;
const APPENDERS: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 16 KiB batch of 1 KiB records (uncompressed, as a worst case for bytes on disk).
fn batch(seed: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None).producer(1, 0, 0);
    for i in 0..RECORDS_PER_BATCH {
        let value: Vec<u8> = (0..RECORD_BYTES)
            .map(|j| ((seed * 31 + i * 7 + j) % 251) as u8)
            .collect();
        builder
            .append(
                1_700_000_000_000 + seed as i64,
                Some(format!("key-{i}").as_bytes()),
                Some(&value),
                &[],
            )
            .unwrap();
    }
    builder.build().unwrap()
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn report(what: &str, bytes: u64, count: u64, elapsed: Duration) {
    println!(
        "{what:<58} {:>9.1} MB/s {:>10.0} ops/s  ({count} ops, {:.2} s)",
        mb_per_s(bytes, elapsed),
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

fn open(dir: &Path) -> (PartitionLog, spool_log::OpenReport, Duration) {
    let started = Instant::now();
    let (log, report) =
        PartitionLog::open(Arc::new(DiskStorage), dir, LogConfig::default(), 0).unwrap();
    (log, report, started.elapsed())
}

/// The disk itself: sequential writes each followed by fdatasync, at the sizes of one
/// durable append (16 KiB) and of one full group-commit round of 8 appenders (128 KiB),
/// then plain sequential writes with one fdatasync at the end.
fn disk_baseline(root: &Path, fsync_writes: usize) {
    let path = root.join("baseline");
    for block_kib in [16usize, 128] {
        let block = vec![0x5au8; block_kib * 1024];
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let started = Instant::now();
        for _ in 0..fsync_writes {
            file.write_all(&block).unwrap();
            file.sync_data().unwrap();
        }
        let what = format!("disk: {block_kib} KiB write + fdatasync, sequential");
        report(
            &what,
            (fsync_writes * block.len()) as u64,
            fsync_writes as u64,
            started.elapsed(),
        );
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let big = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..512 {
        file.write_all(&big).unwrap();
    }
    file.sync_data().unwrap();
    report(
        "disk: 512 MiB sequential write, one fdatasync at the end",
        512 << 20,
        512,
        started.elapsed(),
    );
    fs::remove_file(&path).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful to us.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root: PathBuf = std::env::var_os("SPOOL_BENCH_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("spool-log-bench-{}", std::process::id()));
    fs::create_dir_all(&root).unwrap();
    let log_mb = env_usize("SPOOL_BENCH_LOG_MB", 1024);
    let fsync_appends = env_usize("SPOOL_BENCH_FSYNC_APPENDS", 2000);
    let batch_bytes = batch(0).len() as u64;
    println!(
        "batch: {RECORDS_PER_BATCH} x {RECORD_BYTES} B records = {batch_bytes} bytes; log size {log_mb} MB"
    );

    disk_baseline(&root, fsync_appends);

    // 1. Appends without fsync (page cache).
    let dir = root.join("append-0");
    let (mut log, _, _) = open(&dir);
    let batches = (log_mb << 20) / batch_bytes as usize;
    let inputs: Vec<Bytes> = (0..64).map(batch).collect();
    let started = Instant::now();
    for i in 0..batches {
        log.append_as_leader(inputs[i % inputs.len()].clone(), 0, 0)
            .unwrap();
    }
    let elapsed = started.elapsed();
    report(
        "log: append 16 KiB batches, no fsync",
        batches as u64 * batch_bytes,
        batches as u64,
        elapsed,
    );
    let started = Instant::now();
    log.flush().unwrap();
    println!(
        "{:<58} {:>9.1} ms",
        "log: one flush of all of that",
        started.elapsed().as_secs_f64() * 1e3
    );

    // 2. Sequential read of the whole log, 1 MiB at a time, from the page cache.
    let started = Instant::now();
    let (mut offset, mut bytes, mut reads) = (0i64, 0u64, 0u64);
    let mut buffer = Vec::new();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, i64::MAX).unwrap();
        let range = read.range.expect("data below the log end");
        range.read_into(&mut buffer).unwrap();
        bytes += buffer.len() as u64;
        reads += 1;
        offset = read.next_offset;
    }
    report(
        "log: sequential read, 1 MiB reads into a reused buffer",
        bytes,
        reads,
        started.elapsed(),
    );

    // 3. Open after a clean shutdown, then after a crash with various unflushed tails.
    log.close().unwrap();
    let (log, report_open, elapsed) = open(&dir);
    println!(
        "{:<58} {:>9.1} ms  ({} segments, {} scanned)",
        format!("log: open {log_mb} MB after clean shutdown"),
        elapsed.as_secs_f64() * 1e3,
        log.segment_count(),
        report_open.segments_scanned
    );
    recovery(&root, &dir, log, &inputs, batch_bytes);

    // 4. One appender, one fsync per append.
    let dir = root.join("fsync-0");
    let (mut log, _, _) = open(&dir);
    let started = Instant::now();
    for i in 0..fsync_appends {
        log.append_as_leader(inputs[i % inputs.len()].clone(), 0, 0)
            .unwrap();
        log.flush().unwrap();
    }
    report(
        "log: append + fsync per append, 1 appender",
        fsync_appends as u64 * batch_bytes,
        fsync_appends as u64,
        started.elapsed(),
    );
    drop(log);

    // 5. Eight appenders sharing group commits, each with 1 append in flight (waiting for
    // each before the next), then with 4 in flight, as pipelining producers do.
    for in_flight in [1usize, 4] {
        group_commit(
            &root.join(format!("group-{in_flight}")),
            &inputs,
            batch_bytes,
            fsync_appends / APPENDERS * 2,
            in_flight,
        );
    }

    fs::remove_dir_all(&root).unwrap();
}

/// `APPENDERS` threads append durably; each appends `in_flight` batches, then waits for
/// the last of them to be durable.
fn group_commit(
    dir: &Path,
    inputs: &[Bytes],
    batch_bytes: u64,
    per_thread: usize,
    in_flight: usize,
) {
    let (log, _, _) = open(dir);
    let shared = Arc::new(SharedLog::new(log));
    let started = Instant::now();
    let handles: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let inputs = inputs.to_vec();
            thread::spawn(move || {
                for i in (0..per_thread).step_by(in_flight) {
                    let mut last = 0;
                    for j in i..(i + in_flight).min(per_thread) {
                        let batch = inputs[(t + j) % inputs.len()].clone();
                        last = shared.append(batch, 0, 0).unwrap().last_offset;
                    }
                    shared.wait_durable(last + 1).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let elapsed = started.elapsed();
    let total = (per_thread * APPENDERS) as u64;
    let what = format!("log: {APPENDERS} appenders x {in_flight} in flight, group commit");
    report(&what, total * batch_bytes, total, elapsed);
    println!(
        "{:<58} {:>9} rounds for {total} appends",
        "log: group commit fsync rounds",
        shared.sync_rounds()
    );
}

/// Recovery after a crash costs the unflushed tail, not the log: reopen without the
/// clean-shutdown marker after appending tails of different sizes past the recovery point.
fn recovery(
    root: &Path,
    big_dir: &Path,
    big_log: PartitionLog,
    inputs: &[Bytes],
    batch_bytes: u64,
) {
    let small_dir = root.join("small-0");
    let (mut small_log, _, _) = open(&small_dir);
    for i in 0..(64 << 20) / batch_bytes as usize {
        small_log
            .append_as_leader(inputs[i % inputs.len()].clone(), 0, 0)
            .unwrap();
    }
    for (name, dir, mut log) in [
        ("64 MB log", small_dir.clone(), small_log),
        ("full-size log", big_dir.to_path_buf(), big_log),
    ] {
        log.flush().unwrap();
        log.write_checkpoint().unwrap();
        for tail_mb in [16usize, 128] {
            for i in 0..(tail_mb << 20) / batch_bytes as usize {
                log.append_as_leader(inputs[i % inputs.len()].clone(), 0, 0)
                    .unwrap();
            }
            // A crash: no flush of the tail, no checkpoint, no clean-shutdown marker.
            drop(log);
            let _ = fs::remove_file(dir.join(CLEAN_SHUTDOWN_FILE));
            let (reopened, report, elapsed) = open(&dir);
            println!(
                "{:<58} {:>9.1} ms  ({} of {} segments scanned)",
                format!("log: recover {name} with a {tail_mb} MB unflushed tail"),
                elapsed.as_secs_f64() * 1e3,
                report.segments_scanned,
                reopened.segment_count()
            );
            log = reopened;
        }
        drop(log);
    }
}
