#!/usr/bin/env bash
# Interop tests: the real spool binary driven by real third-party clients — kcat (Debian)
# and confluent-kafka, kafka-python, aiokafka (PyPI), and Burrow (Debian). Installs what it
# needs: kcat, openssl, Burrow and ZooKeeper with apt-get when missing (and nftables as
# root, for the network-partition tests), the Python clients into build/venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v kcat >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq kcat >/dev/null
fi

# The TLS tests make their certificates with openssl.
if ! command -v openssl >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq openssl >/dev/null
fi

# The consumer-lag test runs Burrow, which keeps its state in ZooKeeper (both Debian's).
if ! command -v Burrow >/dev/null 2>&1 || [ ! -f /usr/share/java/zookeeper.jar ]; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends burrow zookeeper >/dev/null
fi

# The network-partition tests run as root only, with nftables.
if [ "$(id -u)" = 0 ] && ! command -v nft >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq nftables >/dev/null
fi

venv="$root/build/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    as_root apt-get update -qq
    as_root apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt

cargo build -q --locked -p spool
SPOOL_BIN="$root/target/debug/spool" "$venv/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/interop
