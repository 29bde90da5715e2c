#!/usr/bin/env bash
# Re-captures the golden request frames from real clients: kcat (Debian), confluent-kafka
# and kafka-python (PyPI). Not part of the test suite, which only reads the committed
# captures; run it by hand after changing what the clients should exercise.
#
#   crates/protocol/tests/golden/capture.sh
#
# Needs: kcat (apt-get install kcat) and a Python with confluent-kafka, kafka-python,
# python-snappy (or cramjam), lz4 and zstandard (pip install ...), as VENV/bin/python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
python="${VENV:-$root/build/venv}/bin/python"
out="$here/frames"

cargo build -q -p spool-protocol --example capture_broker
rm -rf "$out" && mkdir -p "$out"
log="$(mktemp)"
"$root/target/debug/examples/capture_broker" 127.0.0.1:0 "$out" >"$log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q listening "$log" && break; sleep 0.1; done
addr="$(sed -n 's/^listening on //p' "$log")"
echo "capture broker on $addr"

k() { kcat -b "$addr" -X client.id=kcat "$@"; }
k -L >/dev/null
for codec in none gzip snappy lz4 zstd; do
  # Compressible values: librdkafka sends a batch uncompressed when compression would not shrink it.
  seq 1 20 | sed 's/.*/key-&:value-&-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/' | k -P -t golden -p 0 -K: -z "$codec" -H trace=kcat -X enable.idempotence=true
done
k -C -t golden -p 0 -o beginning -e -q >/dev/null
timeout 8 kcat -b "$addr" -X client.id=kcat -G golden-kcat golden -q -e >/dev/null || true

"$python" "$here/clients.py" confluent-kafka "$addr"
"$python" "$here/clients.py" kafka-python "$addr"

echo "captured:"; (cd "$out" && find . -name '*.bin' | sort)
