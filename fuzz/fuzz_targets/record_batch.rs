//! Record batch parsing, CRC checks, decompression (every codec, capped) and record
//! iteration over arbitrary bytes. A fixed CRC is patched in half the time so that the
//! fuzzer gets past the checksum into the records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spool_protocol::record_batch::{RecordBatchMut, RecordBatches};

const DECOMPRESSED_LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let [fix_crc, rest @ ..] = data else { return };
    let mut bytes = rest.to_vec();
    if fix_crc & 1 == 1 {
        if let Ok(mut batch) = RecordBatchMut::new(&mut bytes) {
            batch.update_crc();
        }
    }
    for batch in RecordBatches::new(Bytes::from(bytes)) {
        let Ok(batch) = batch else { break };
        let _ = batch.verify_crc();
        let _ = batch.validate_for_append(DECOMPRESSED_LIMIT);
        if let Ok(records) = batch.records(DECOMPRESSED_LIMIT) {
            for record in records.take(10_000) {
                if record.is_err() {
                    break;
                }
            }
        }
    }
});
