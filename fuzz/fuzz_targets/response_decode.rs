//! Every response decoder at every version (what the client crate will read from brokers).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spool_protocol::frame::decode_response;
use spool_protocol::messages::ApiKey;

fuzz_target!(|data: &[u8]| {
    let [pick, version_pick, body @ ..] = data else { return };
    let key = ApiKey::ALL[*pick as usize % ApiKey::ALL.len()];
    let range = key.versions();
    let version = range.min + (*version_pick as i16) % (range.max - range.min + 1);
    let _ = decode_response(key, version, Bytes::copy_from_slice(body));
});
