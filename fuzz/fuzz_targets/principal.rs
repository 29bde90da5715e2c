//! What turns a client certificate into a principal: the subject read from arbitrary DER,
//! and `ssl.principal.mapping.rules` parsed from, and applied to, arbitrary text (the first
//! line is the rules, the rest the name). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_broker::auth::principal::{MappingRules, subject_name};

fuzz_target!(|data: &[u8]| {
    let _ = subject_name(data);
    let text = String::from_utf8_lossy(data);
    let (rules, name) = text.split_once('\n').unwrap_or((&text, "CN=alice,O=Example"));
    if let Ok(rules) = MappingRules::parse(rules) {
        let _ = rules.apply(name);
    }
});
