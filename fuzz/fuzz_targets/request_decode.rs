//! Every request decoder at every version, through the frame-level entry point the broker
//! uses. The first two bytes pick the API and version; the rest is the body. Whatever
//! decodes must re-encode and decode back to the same value.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

use spool_protocol::frame::{decode_request, encode_request};
use spool_protocol::header::RequestHeader;

#[path = "pick.rs"]
mod pick;

fuzz_target!(|data: &[u8]| {
    let [pick, version_pick, body @ ..] = data else {
        return;
    };
    let (key, version) = pick::api_and_version(*pick, *version_pick);
    let header = RequestHeader {
        request_api_key: key as i16,
        request_api_version: version,
        correlation_id: 7,
        client_id: Some("fuzz".into()),
        unknown_tagged_fields: Vec::new(),
    };
    let mut frame = BytesMut::new();
    if header.encode(&mut frame).is_err() {
        return;
    }
    frame.put_slice(body);
    if let Ok((decoded_header, request)) = decode_request(frame.freeze()) {
        let encoded =
            encode_request(&decoded_header, &request).expect("a decoded request re-encodes");
        let (_, again) = decode_request(Bytes::copy_from_slice(&encoded[4..]))
            .expect("re-encoded request decodes");
        assert_eq!(again, request);
    }
});
