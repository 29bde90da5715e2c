#!/usr/bin/env bash
# Spool's whole test suite: formatting, lints, every Rust test (unit, property,
# generated round-trip, hostile-input, golden-capture and server tests), and interop tests
# with real Kafka clients (kcat, confluent-kafka, kafka-python, aiokafka).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Real third-party clients against the real binary.
./tests/interop/run.sh
