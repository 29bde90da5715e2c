//! The generated message modules are committed; this test fails when they differ from what
//! the specs produce today, so a spec change cannot land without its code.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

#[test]
fn generated_code_matches_the_specs() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = spool_protocol_gen::generate(crate_dir)
        .unwrap_or_else(|e| panic!("specs do not parse: {e}"));
    let mut stale = Vec::new();
    for file in &files {
        let on_disk = fs::read_to_string(crate_dir.join(&file.path)).unwrap_or_default();
        if on_disk != file.contents {
            stale.push(file.path.display().to_string());
        }
    }
    let expected: BTreeSet<_> = files.iter().map(|f| crate_dir.join(&f.path)).collect();
    for dir in ["src/messages", "src/internal"] {
        for entry in fs::read_dir(crate_dir.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !expected.contains(&entry.path()) {
                stale.push(format!("{} (no spec produces it)", entry.path().display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "regenerate with `cargo run -p spool-protocol-gen`; stale: {stale:#?}"
    );
}
