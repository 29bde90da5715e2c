"""Rebalance benchmark with real clients (confluent-kafka / librdkafka): ten consumers share
a 900-partition topic; an eleventh joins. Prints, per group protocol, how long until the
eleven hold every partition once with 81 or 82 each, and how many partitions were revoked
on the way: an eager classic rebalance takes every partition from every member and hands
them all out again (librdkafka pauses them meanwhile); KIP-848 revokes only those that move.

    cargo build --release -p spool
    build/venv/bin/python bench/rebalance_bench.py [--heartbeat-ms 3000] [--spool target/release/spool]

The classic members heartbeat every --heartbeat-ms (librdkafka's default is 3000); the
KIP-848 members at the interval the broker sets, the same figure
(group.consumer.heartbeat.interval.ms; Kafka's default is 5000). Members are threads of this
process polling an empty topic; every loop is bounded in count and time.
"""
import argparse
import shutil
import subprocess
import tempfile
import threading
import time

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 900
MEMBERS = 10
TIMEOUT_S = 120


class Member(threading.Thread):
    def __init__(self, bootstrap, group, protocol, heartbeat_ms, stop):
        super().__init__(daemon=True)
        config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        if protocol == "consumer":
            config["group.protocol"] = "consumer"
        else:
            config["heartbeat.interval.ms"] = heartbeat_ms
        self.consumer = Consumer(config)
        self.held = 0
        self.revoked = 0
        self.stop = stop

    def on_revoke(self, consumer, partitions):
        self.revoked += len(partitions)

    def run(self):
        self.consumer.subscribe(["rebalance"], on_revoke=self.on_revoke)
        deadline = time.time() + TIMEOUT_S * 3
        while not self.stop.is_set() and time.time() < deadline:
            self.consumer.consume(100, 0.02)
            self.held = len(self.consumer.assignment())
        self.consumer.close()


def settled(members):
    held = [m.held for m in members]
    each, extra = divmod(PARTITIONS, len(members))
    return sum(held) == PARTITIONS and sorted(held) == [each] * (len(members) - extra) + [each + 1] * extra


def wait(members, what):
    """Waits until the members settle; returns the seconds it took."""
    started = time.time()
    while time.time() - started < TIMEOUT_S:
        if settled(members):
            return time.time() - started
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}: {[m.held for m in members]}")


def run(bootstrap, protocol, heartbeat_ms):
    stop = threading.Event()
    members = [Member(bootstrap, f"bench-{protocol}", protocol, heartbeat_ms, stop) for _ in range(MEMBERS)]
    try:
        for m in members:
            m.start()
        wait(members, "the first ten members")
        time.sleep(2 * heartbeat_ms / 1000)
        revoked = sum(m.revoked for m in members)
        joining = Member(bootstrap, f"bench-{protocol}", protocol, heartbeat_ms, stop)
        members.append(joining)
        joining.start()
        seconds = wait(members, "the eleventh member")
        revoked = sum(m.revoked for m in members) - revoked
        print(f"{protocol:>8}: one member joins 10 on {PARTITIONS} partitions -> settled in {seconds:.2f} s, "
              f"{revoked} partitions revoked")
    finally:
        stop.set()
        for m in members:
            m.join(timeout=30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", default="target/release/spool")
    parser.add_argument("--heartbeat-ms", type=int, default=3000)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="spool-rebalance-")
    broker = subprocess.Popen(
        [args.spool, "server", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--data-dir", data_dir,
         "--set", f"group.consumer.heartbeat.interval.ms={args.heartbeat_ms}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        bootstrap = None
        for _ in range(20):
            line = broker.stdout.readline()
            if line.startswith("spool: Kafka listener "):
                bootstrap = line.split()[-1]
                break
        if bootstrap is None:
            raise SystemExit("spool did not report its listener")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("rebalance", PARTITIONS)])["rebalance"].result(timeout=60)
        print(f"heartbeat interval {args.heartbeat_ms} ms")
        for protocol in ("classic", "consumer"):
            run(bootstrap, protocol, args.heartbeat_ms)
    finally:
        broker.terminate()
        broker.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
