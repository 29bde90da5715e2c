//! Regenerates the message modules of `spool-protocol` from its specs.
//!
//! `cargo run -p spool-protocol-gen` rewrites `crates/protocol/src/messages` and
//! `crates/protocol/src/internal`, deleting generated files whose spec is gone.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = match spool_protocol_gen::generate(&crate_dir) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for dir in ["src/messages", "src/internal"] {
        let dir = crate_dir.join(dir);
        if let Err(e) = fs::create_dir_all(&dir) {
            eprintln!("error: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        // Remove generated files that no spec produces any more.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !files.iter().any(|f| crate_dir.join(&f.path) == path) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    for file in &files {
        let path = crate_dir.join(&file.path);
        if fs::read_to_string(&path).ok().as_deref() != Some(file.contents.as_str())
            && let Err(e) = fs::write(&path, &file.contents)
        {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("generated {} files", files.len());
    ExitCode::SUCCESS
}
