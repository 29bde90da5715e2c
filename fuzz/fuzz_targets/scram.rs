//! The SCRAM server's parsers on arbitrary client messages: the first byte picks the
//! mechanism and whether the user is known; the rest is the client-first message, a 0xFF
//! byte, and the client-final message, in which `{nonce}` is replaced by the nonce the
//! server sent (so the fuzzer gets past the nonce check into the proof). Nothing may panic,
//! and no forged exchange may succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_broker::auth::scram::{Credential, Mechanism, ScramServer, Step};

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    let mechanism = if pick & 1 == 0 {
        Mechanism::Sha256
    } else {
        Mechanism::Sha512
    };
    let known = pick & 2 == 0;
    let (first, last) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let credential = Credential::from_salted_password(mechanism, b"salt", 4096, b"not-derived");
    let mut server = ScramServer::new(mechanism);
    let Ok(Step::Continue(server_first)) =
        server.step(first, |_| known.then(|| credential.clone()))
    else {
        return;
    };
    let Some(last) = last else { return };
    let server_first = String::from_utf8(server_first).expect("the server writes text");
    let nonce = server_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .expect("server-first carries the nonce");
    let last = String::from_utf8_lossy(last).replace("{nonce}", nonce);
    let outcome = server.step(last.as_bytes(), |_| None);
    // The proof is keyed on a salted password the input never saw: it cannot match.
    assert!(outcome.is_err(), "a forged exchange succeeded: {outcome:?}");
});
