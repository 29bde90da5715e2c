#!/usr/bin/env bash
# Spool's whole test suite: formatting, lints, and every Rust test (unit, property,
# generated round-trip, hostile-input and golden-capture tests).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
