//! Hostile input against every request decoder, with allocations measured.
//!
//! A decoder that sizes a buffer from a count on the wire can be made to ask for gigabytes
//! by a four-byte body (Kafka's CVE-2022-34917 is this bug class). Here every API and
//! version is fed huge counts and lengths, truncated frames and random bytes, and a
//! counting global allocator checks that no decode allocates more than a small multiple of
//! its input.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};

use crate::compression::Compression;
use crate::error::DecodeError;
use crate::frame::decode_request;
use crate::header::RequestHeader;
use crate::messages::{ApiKey, RequestBody};
use crate::record_batch::{RecordBatch, RecordBatchBuilder};
use crate::sample::SampleRng;

/// Counts the allocations of the current thread while a measurement is running.
struct CountingAllocator;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
    static TOTAL_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with` because the allocator can run while thread-locals are torn down.
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let _ = LARGEST_BYTES.try_with(|l| l.set(l.get().max(size)));
            let _ = TOTAL_BYTES.try_with(|t| t.set(t.get() + size));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are counted.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocation allowed per input byte, plus a fixed allowance for small fixed-size values.
/// A one-byte empty compact string becomes a 24-byte `String`, and vectors grow by
/// doubling, so 64 bytes per input byte bounds the legitimate worst case; a decoder that
/// trusted a count would exceed it by orders of magnitude.
const BYTES_PER_INPUT_BYTE_MAX: usize = 64;
const FIXED_ALLOWANCE_BYTES: usize = 8 * 1024;

/// Decodes a request and insists that it used the whole frame. (The broker tolerates bytes
/// after the body, as Kafka does; for hostile input, a body that only decodes by leaving
/// most of the frame unread has not really decoded.)
fn decode_whole_request(frame: Bytes) -> Result<(), DecodeError> {
    let mut rest = frame;
    let header = crate::header::RequestHeader::decode(&mut rest)?;
    let key = header
        .api_key()
        .ok_or(DecodeError::UnknownApiKey(header.request_api_key))?;
    RequestBody::decode(key, header.request_api_version, &mut rest)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(())
}

struct Measured {
    result: Result<(), DecodeError>,
    largest_bytes: usize,
    total_bytes: usize,
}

fn measure_decode(frame: Bytes) -> Measured {
    LARGEST_BYTES.with(|l| l.set(0));
    TOTAL_BYTES.with(|t| t.set(0));
    MEASURING.with(|m| m.set(true));
    let result = decode_whole_request(frame);
    MEASURING.with(|m| m.set(false));
    Measured {
        result,
        largest_bytes: LARGEST_BYTES.with(Cell::get),
        total_bytes: TOTAL_BYTES.with(Cell::get),
    }
}

fn assert_bounded(what: &str, frame: &Bytes) -> Result<(), DecodeError> {
    let input_bytes = frame.len();
    let measured = measure_decode(frame.clone());
    let budget = BYTES_PER_INPUT_BYTE_MAX * input_bytes + FIXED_ALLOWANCE_BYTES;
    assert!(
        measured.total_bytes <= budget,
        "{what}: decoding {input_bytes} bytes allocated {} in all (largest {}), over the budget of {budget}",
        measured.total_bytes,
        measured.largest_bytes
    );
    measured.result
}

fn header_bytes(key: ApiKey, version: i16) -> BytesMut {
    let header = RequestHeader {
        request_api_key: key as i16,
        request_api_version: version,
        correlation_id: 1,
        client_id: Some("hostile".into()),
        unknown_tagged_fields: Vec::new(),
    };
    let mut buf = BytesMut::new();
    header.encode(&mut buf).expect("header encodes");
    buf
}

fn every_request_version() -> impl Iterator<Item = (ApiKey, i16)> {
    ApiKey::ALL.iter().flat_map(|&key| {
        let range = key.versions();
        (range.min..=range.max).map(move |version| (key, version))
    })
}

#[test]
fn huge_counts_as_the_whole_body_fail_for_every_request_and_version() {
    // Classic encodings carry i32 counts and i16/i32 lengths; flexible ones carry varints.
    // (`ff ff ff ff` alone is not hostile in a classic version: it is a null array, and
    // for Metadata a null topic list is a valid request.)
    let classic: [&[u8]; 2] = [
        &[0x7f, 0xff, 0xff, 0xff],
        &[0x7f, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
    ];
    let flexible: [&[u8]; 3] = [
        &[0x7f, 0xff, 0xff, 0xff],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0xff, 0xff, 0xff, 0xff, 0x07, 0xff, 0xff, 0xff, 0xff, 0x07],
    ];
    for (key, version) in every_request_version() {
        let bodies: &[&[u8]] = if key.flexible_versions().contains(version) {
            &flexible
        } else {
            &classic
        };
        for body in bodies {
            let mut frame = header_bytes(key, version);
            frame.put_slice(body);
            let what = format!("{}v{version} body {body:02x?}", key.name());
            assert!(
                assert_bounded(&what, &frame.freeze()).is_err(),
                "{what}: decoded without error"
            );
        }
    }
}

#[test]
fn every_truncation_of_a_valid_request_fails_cleanly() {
    for (key, version) in every_request_version() {
        let mut rng = SampleRng::new(version as u64);
        let body = RequestBody::sample(key, version, &mut rng);
        let mut frame = header_bytes(key, version);
        body.encode(&mut frame, version).expect("sample encodes");
        let frame = frame.freeze();
        assert!(
            decode_request(frame.clone()).is_ok(),
            "{}v{version}: the sample itself must decode",
            key.name()
        );
        for cut in 0..frame.len() {
            let what = format!("{}v{version} cut at {cut}", key.name());
            assert!(
                assert_bounded(&what, &frame.slice(..cut)).is_err(),
                "{what}: decoded without error"
            );
        }
    }
}

#[test]
fn two_gigabyte_lengths_at_every_position_stay_within_the_allocation_budget() {
    for (key, version) in every_request_version() {
        let mut rng = SampleRng::new(1000 + version as u64);
        let body = RequestBody::sample(key, version, &mut rng);
        let mut frame = header_bytes(key, version);
        body.encode(&mut frame, version).expect("sample encodes");
        let patches: [&[u8]; 3] = [
            &[0x7f, 0xff, 0xff, 0xff],
            &[0xff, 0xff, 0xff, 0xff, 0x07],
            &[0x7f, 0xff],
        ];
        for at in 0..frame.len() {
            for patch in patches {
                let mut hostile = frame.clone();
                let end = (at + patch.len()).min(hostile.len());
                hostile[at..end].copy_from_slice(&patch[..end - at]);
                let what = format!("{}v{version} {patch:02x?} at {at}", key.name());
                // Some patches still spell a valid request; all must stay in budget.
                let _ = assert_bounded(&what, &hostile.freeze());
            }
        }
    }
}

#[test]
fn random_bytes_never_panic_and_stay_within_the_allocation_budget() {
    let mut rng = SampleRng::new(0x5eed);
    for (key, version) in every_request_version() {
        for _ in 0..64 {
            let mut frame = header_bytes(key, version);
            let len = rng.below(96) as usize;
            for _ in 0..len {
                frame.put_u8(rng.next_u64() as u8);
            }
            let what = format!("{}v{version} random {len} bytes", key.name());
            let _ = assert_bounded(&what, &frame.freeze());
        }
    }
}

#[test]
fn a_compressed_batch_of_empty_headers_does_not_inflate_in_memory() {
    // One record with 200,000 empty headers: 2 bytes each decompressed, a few hundred bytes
    // compressed. Building a 64-byte header value for each would allocate ~13 MB.
    let headers: Vec<(&[u8], Option<&[u8]>)> = vec![(&b""[..], None); 200_000];
    let mut builder = RecordBatchBuilder::new(Compression::Zstd);
    builder
        .append(0, Some(b"k"), Some(b"v"), &headers)
        .expect("record fits");
    let bytes = builder.build().expect("batch builds");
    let batch = RecordBatch::from_bytes(bytes.clone()).expect("valid batch");
    let decompressed_bytes = batch.records_data(1 << 24).expect("decompresses").len();
    assert!(
        bytes.len() < 2048,
        "the bomb should be small: {} bytes",
        bytes.len()
    );

    LARGEST_BYTES.with(|l| l.set(0));
    TOTAL_BYTES.with(|t| t.set(0));
    MEASURING.with(|m| m.set(true));
    let validated = batch.validate_for_append(1 << 24);
    let headers_seen = batch
        .records(1 << 24)
        .map(|mut r| r.next().map(|r| r.map(|r| r.headers.len())));
    MEASURING.with(|m| m.set(false));

    validated.expect("the batch is valid");
    assert_eq!(headers_seen, Ok(Some(Ok(200_000))));
    let total = TOTAL_BYTES.with(Cell::get);
    // Two decompressions (validate, then iterate), each growing its output by doubling (at
    // most twice the final size in all), plus the decoder's own buffers. Building the
    // headers eagerly took over 13 MB here.
    let budget = 4 * decompressed_bytes + (2 << 20);
    assert!(
        total <= budget,
        "allocated {total} for {decompressed_bytes} decompressed bytes (budget {budget})"
    );
}

#[test]
fn the_allocation_counter_sees_a_large_allocation() {
    // Guards the guard: if counting broke, every budget check above would pass vacuously.
    MEASURING.with(|m| m.set(true));
    LARGEST_BYTES.with(|l| l.set(0));
    let big = vec![0u8; 1 << 20];
    MEASURING.with(|m| m.set(false));
    assert!(LARGEST_BYTES.with(Cell::get) >= 1 << 20);
    drop(big);
}
