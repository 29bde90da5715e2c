//! Every response decoder at every version (what the client crate will read from brokers).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use spool_protocol::frame::decode_response;

#[path = "pick.rs"]
mod pick;

fuzz_target!(|data: &[u8]| {
    let [pick, version_pick, body @ ..] = data else {
        return;
    };
    let (key, version) = pick::api_and_version(*pick, *version_pick);
    let _ = decode_response(key, version, Bytes::copy_from_slice(body));
});
