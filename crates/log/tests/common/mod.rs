//! What the log's integration tests share.

use spool_log::PartitionLog;
use spool_protocol::record_batch::{Record, RecordBatches};

/// Every record from offset `from` to the log end, read `max_bytes` at a time the way a
/// consumer would, with every batch's CRC checked and every read required to progress.
pub fn records_from(log: &PartitionLog, from: i64, max_bytes: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let read = log.read(offset, max_bytes, i64::MAX).expect("readable");
        let Some(range) = read.range else { break };
        assert!(read.next_offset > offset, "a read must make progress");
        for batch in RecordBatches::new(range.to_bytes().expect("range readable")) {
            let batch = batch.expect("whole batch");
            batch.verify_crc().expect("intact batch");
            for record in batch.records(1 << 20).expect("records") {
                let record = record.expect("record decodes");
                if record.offset >= from {
                    out.push(record);
                }
            }
        }
        offset = read.next_offset;
    }
    out
}
