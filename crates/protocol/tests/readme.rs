//! The README's table of covered APIs must match the code.
#![allow(clippy::expect_used)] // a test: a failed expectation is a failed test

use spool_protocol::messages::ApiKey;

#[test]
fn readme_lists_every_api_with_its_versions() {
    let readme = include_str!("../README.md");
    for key in ApiKey::ALL {
        let versions = key.versions();
        let row = format!(
            "| {} | {} | {}–{} |",
            *key as i16,
            key.name(),
            versions.min,
            versions.max
        );
        assert!(readme.contains(&row), "README lacks `{row}`");
    }
    let rows = readme
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(1)
                    .is_some_and(|c| c.trim().parse::<i16>().is_ok())
        })
        .count();
    assert_eq!(
        rows,
        ApiKey::ALL.len(),
        "README lists APIs the code does not have"
    );
}
