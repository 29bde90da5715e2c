//! PLAIN's message parser (`authzid NUL user NUL password`) and the settings parsers that
//! feed it (JAAS options, the users file) on arbitrary bytes. Nothing may panic, and only
//! the configured password logs in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_broker::auth::plain::PlainUsers;

fuzz_target!(|data: &[u8]| {
    let mut users = PlainUsers::default();
    users
        .add_jaas(r#"PlainLoginModule required user_alice="alice-secret";"#)
        .expect("a valid JAAS line");
    if let Ok(user) = users.authenticate(data) {
        assert_eq!(user, "alice");
        assert!(data.ends_with(b"\0alice\0alice-secret"));
    }
    let text = String::from_utf8_lossy(data);
    let _ = PlainUsers::default().add_jaas(&text);
    let _ = PlainUsers::default().add_file(&text);
});
