//! The generator of Spool's Kafka message types.
//!
//! Spool describes every Kafka API and every internal record in a small spec format of its
//! own (see [`spec`]); this crate parses those specs and emits one Rust module per message
//! with version-aware `Wire` encode and decode, defaults, sample values for tests, and the
//! index modules (`ApiKey`, `RequestBody`, `ResponseBody`). The generated code is committed;
//! a test in `spool-protocol` fails when regenerating would change it.

pub mod emit;
pub mod spec;

use std::fs;
use std::path::{Path, PathBuf};

/// One generated file: its path relative to the protocol crate, and its text.
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
}

fn read_specs(dir: &Path) -> Result<Vec<spec::SpecFile>, String> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spec"))
        .collect();
    entries.sort();
    let mut specs = Vec::new();
    for path in entries {
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        specs.push(spec::parse(&file_name, &text)?);
    }
    Ok(specs)
}

/// Generates every file from the specs under `crate_dir/spec` (APIs) and
/// `crate_dir/spec/records` (internal records).
pub fn generate(crate_dir: &Path) -> Result<Vec<GeneratedFile>, String> {
    let mut files = Vec::new();
    for (spec_dir, out_dir, is_api) in [
        ("spec", "src/messages", true),
        ("spec/records", "src/internal", false),
    ] {
        let specs = read_specs(&crate_dir.join(spec_dir))?;
        for s in &specs {
            let is_api_spec = matches!(s.kind, spec::SpecKind::Api { .. });
            if is_api_spec != is_api {
                return Err(format!(
                    "{}: an {} spec belongs in {}",
                    s.file_name,
                    if is_api_spec { "api" } else { "record" },
                    if is_api_spec {
                        "spec/"
                    } else {
                        "spec/records/"
                    }
                ));
            }
            for m in &s.messages {
                files.push(GeneratedFile {
                    path: Path::new(out_dir).join(format!("{}.rs", emit::snake_case(&m.name))),
                    contents: emit::emit_message(s, m),
                });
            }
        }
        let index = if is_api {
            emit::emit_api_index(&specs)
        } else {
            emit::emit_record_index(&specs)
        };
        files.push(GeneratedFile {
            path: Path::new(out_dir).join("mod.rs"),
            contents: index,
        });
    }
    Ok(files)
}
