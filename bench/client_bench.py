"""Broker benchmark with a real client (confluent-kafka / librdkafka), client and broker on
this machine. Prints one line per figure.

    cargo build --release -p spool
    build/venv/bin/python bench/client_bench.py [--mb 1024] [--spool target/release/spool]

Figures: time from start to serving, broker RSS idle and after, produce MB/s with acks=1 and
acks=all, consume MB/s reading everything back with default consumer settings, and
end-to-end latency percentiles at 10k msg/s with acks=all. 1 KiB messages, one topic of 6
partitions. Every loop is bounded in count and time.
"""
import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

MESSAGE = b"x" * 1024
PARTITIONS = 6


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


def start(spool, data_dir):
    started = time.time()
    process = subprocess.Popen([spool, "server", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                                "--data-dir", data_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = None
    for line in process.stdout:
        if line.startswith("spool: Kafka listener on "):
            address = line.split()[-1]
            break
    if address is None:
        raise SystemExit("spool did not report its listener")
    host, port = address.rsplit(":", 1)
    while True:  # serving = accepting connections
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            if time.time() - started > 30:
                raise
    return process, address, time.time() - started


@contextlib.contextmanager
def running(spool):
    """A broker on a fresh data directory for the block: (process, address, start seconds)."""
    data_dir = tempfile.mkdtemp(prefix="spool-bench-")
    process, address, start_seconds = start(spool, data_dir)
    try:
        yield process, address, start_seconds
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def produce(address, topic, count, acks, spread=True, **config):
    """MB/s for `count` records; `spread` puts them in the partitions in turn, otherwise
    they are keyless and librdkafka's partitioner places them."""
    producer = Producer({"bootstrap.servers": address, "acks": acks, "linger.ms": 5,
                         "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20, **config})
    failures = []
    started = time.time()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, MESSAGE, partition=i % PARTITIONS if spread else -1,
                                 on_delivery=lambda err, _: err and failures.append(err))
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0 and not failures, failures[:3]
    return count * len(MESSAGE) / 1e6 / (time.time() - started)


def consume(address, topic, expected, **config):
    consumer = Consumer({"bootstrap.servers": address, "group.id": "bench", "enable.auto.commit": False,
                         **config})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got, started = 0, time.time()
    while got < expected and time.time() - started < 120:
        for message in consumer.consume(10000, timeout=1):
            if message.error() is None:
                got += len(message.value())
    consumer.close()
    assert got == expected, f"read {got} of {expected} bytes"
    return got / 1e6 / (time.time() - started)


def measure_arrivals(address, topic, expected, ready, results):
    """Runs in its own process so the producer's pacing never delays the reads."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": "lat", "fetch.wait.max.ms": 5})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    consumer.consume(1, timeout=1)  # connect before the producer starts
    ready.set()
    delays, deadline = [], time.time() + 60
    while len(delays) < expected and time.time() < deadline:
        # poll returns as soon as a message is there; consume(n, timeout) would wait for
        # n messages and add up to its timeout to every delay.
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            delays.append(time.time() - float(message.value()))
    consumer.close()
    results.put(delays)


def latency(address, topic, rate, seconds):
    """Produces at `rate` msg/s with acks=all; a consumer in another process notes arrivals."""
    expected = rate * seconds + 1  # the paced messages plus one that warms the connection
    ready, results = multiprocessing.Event(), multiprocessing.Queue()
    reader = multiprocessing.Process(target=measure_arrivals,
                                     args=(address, topic, expected, ready, results))
    reader.start()
    ready.wait(30)
    producer = Producer({"bootstrap.servers": address, "acks": "all", "linger.ms": 0})
    producer.produce(topic, b"%.6f" % time.time(), partition=0)
    producer.flush(10)
    started = time.time()
    for i in range(rate * seconds):
        pause = started + i / rate - time.time()
        if pause > 0:
            time.sleep(pause)
        producer.produce(topic, b"%.6f" % time.time(), partition=i % PARTITIONS)
        producer.poll(0)
    producer.flush(30)
    delays = sorted(results.get(timeout=90))
    reader.join(30)
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] * 1000
    return pick(0.50), pick(0.99), pick(0.999), len(delays)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--spool", default="target/release/spool")
    args = parser.parse_args()
    with running(args.spool) as (process, address, start_seconds):
        print(f"start to serving: {start_seconds * 1000:.0f} ms")
        time.sleep(1)
        print(f"broker RSS idle: {rss_mb(process.pid):.1f} MB")
        admin = AdminClient({"bootstrap.servers": address})
        for topic in ["acks1", "acksall", "latency"]:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        count = args.mb * 1024
        print(f"produce acks=1: {produce(address, 'acks1', count, '1'):.0f} MB/s ({args.mb} MB)")
        print(f"produce acks=all: {produce(address, 'acksall', count, 'all'):.0f} MB/s ({args.mb} MB)")
        print(f"consume: {consume(address, 'acks1', count * len(MESSAGE)):.0f} MB/s ({args.mb} MB)")
        p50, p99, p999, n = latency(address, "latency", 10000, 5)
        print(f"end-to-end latency at 10k msg/s, acks=all: p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms ({n} messages)")
        print(f"broker RSS after: {rss_mb(process.pid):.1f} MB")


if __name__ == "__main__":
    main()
