"""Transactions with a real client (confluent-kafka / librdkafka), client and broker on this
machine. Prints one line per figure.

    cargo build --release -p spool
    build/venv/bin/python bench/txn_bench.py [--mb 512] [--per-txn 100] [--spool target/release/spool]

Figures: produce MB/s of a plain idempotent producer (acks=all) and of a transactional one
committing every `--per-txn` messages; the latency of those commits (commit_transaction after
the transaction's records are acknowledged, so the figure is the EndTxn round: PrepareCommit,
markers, CompleteCommit); consume MB/s of the transactional topic with read_uncommitted and
with read_committed. 1 KiB messages, 6 partitions, each transaction writes to all of them.
Every loop is bounded in count and time.
"""
import argparse
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from client_bench import MESSAGE, PARTITIONS, consume, produce, rss_mb, running


def produce_transactions(address, topic, count, per_txn):
    """Returns (MB/s, sorted commit latencies in seconds)."""
    producer = Producer({"bootstrap.servers": address, "transactional.id": "bench", "linger.ms": 5,
                         "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20})
    producer.init_transactions(30)
    failures, commits = [], []
    started = time.time()
    for first in range(0, count, per_txn):
        assert time.time() - started < 600, "transactional produce took over 10 minutes"
        producer.begin_transaction()
        for i in range(first, min(count, first + per_txn)):
            producer.produce(topic, MESSAGE, partition=i % PARTITIONS,
                             on_delivery=lambda err, _: err and failures.append(err))
        assert producer.flush(60) == 0 and not failures, failures[:3]
        before = time.time()
        producer.commit_transaction(60)
        commits.append(time.time() - before)
    throughput = count * len(MESSAGE) / 1e6 / (time.time() - started)
    return throughput, sorted(commits)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--per-txn", type=int, default=100)
    parser.add_argument("--spool", default="target/release/spool")
    args = parser.parse_args()
    with running(args.spool) as (process, address, _):
        admin = AdminClient({"bootstrap.servers": address})
        for topic in ["plain", "txn"]:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        count = args.mb * 1024
        plain = produce(address, "plain", count, "all", **{"enable.idempotence": True})
        print(f"produce idempotent, acks=all: {plain:.0f} MB/s ({args.mb} MB)")
        txn, commits = produce_transactions(address, "txn", count, args.per_txn)
        print(f"produce transactional, {args.per_txn} messages per transaction: {txn:.0f} MB/s "
              f"({args.mb} MB, {len(commits)} transactions)")
        pick = lambda q: commits[min(len(commits) - 1, int(q * len(commits)))] * 1000
        print(f"commit latency: p50 {pick(0.50):.2f} ms, p99 {pick(0.99):.2f} ms, "
              f"max {commits[-1] * 1000:.2f} ms")
        total = count * len(MESSAGE)
        for isolation in ["read_uncommitted", "read_committed"]:
            rate = consume(address, "txn", total, **{"isolation.level": isolation,
                                                     "group.id": f"bench-{isolation}"})
            print(f"consume {isolation}: {rate:.0f} MB/s ({args.mb} MB)")
        print(f"broker RSS after: {rss_mb(process.pid):.1f} MB")


if __name__ == "__main__":
    main()
