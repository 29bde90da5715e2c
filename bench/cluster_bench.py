"""Replicated cluster benchmark with a real client (confluent-kafka / librdkafka): three
brokers on this machine (`spool dev cluster`), topics with replication factor 3 and
min.insync.replicas=2, 1 KiB messages. Prints one line per figure.

    cargo build --release -p spool
    build/venv/bin/python bench/cluster_bench.py [--mb 512] [--spool target/release/spool]

Figures: produce MB/s with acks=all; end-to-end latency percentiles at 10k msg/s with
acks=all; time from kill -9 of a partition leader (not the active controller) until an
acks=all write to that partition is acknowledged; time from SIGTERM of a leader (its
leadership moved by controlled shutdown) until such a write is acknowledged; and, for a
producer writing without pause through such a move, the longest gap between two
acknowledgements. Every loop is bounded in count and time.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from client_bench import PARTITIONS, latency, produce

NODES = 3
BASE_PORT = 29300


class Cluster:
    def __init__(self, spool):
        self.spool = spool
        self.dir = tempfile.mkdtemp(prefix="spool-bench-cluster-")
        env = dict(os.environ, SPOOL_LOG="spool_metadata=info")
        self.args = {}
        self.process = subprocess.Popen(
            [spool, "dev", "cluster", "--nodes", str(NODES), "--data-dir", self.dir,
             "--base-port", str(BASE_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.process.stdout.readline()
            assert line, "spool dev cluster stopped"
            if line.startswith("spool: cluster ready; bootstrap servers "):
                self.bootstrap = line.split()[-1]
                return
        raise AssertionError("no cluster")

    def node_pid(self, node):
        out = subprocess.check_output(["pgrep", "-f", f"data-dir {self.dir}/node-{node} "])
        return int(out.split()[0])

    def restart_args(self, node):
        """The command the dev cluster printed when it saw its child `node` stop (a node
        restarted here keeps it)."""
        while node not in self.args:
            line = self.process.stdout.readline()
            assert line, "spool dev cluster stopped"
            if line.startswith("spool: node "):
                stopped = int(line.split()[2])
                self.args[stopped] = line.split("Start it again with: ")[1].split()
        return self.args[node]

    def restart(self, node):
        args = self.restart_args(node)
        env = dict(os.environ, SPOOL_LOG="spool_metadata=info")
        log = open(os.path.join(self.dir, f"node-{node}.log"), "a")
        child = subprocess.Popen([self.spool] + args[1:], stdout=subprocess.PIPE,
                                 stderr=log, text=True, env=env)
        while True:
            line = child.stdout.readline()
            if not line:
                with open(os.path.join(self.dir, f"node-{node}.log"), errors="replace") as f:
                    raise AssertionError(f"node {node} stopped: {f.read()[-2000:]}")
            if line.startswith("spool: data in "):
                return child

    def active_controller(self):
        terms = {}
        for node in range(NODES):
            with open(os.path.join(self.dir, f"node-{node}.log"), errors="replace") as log:
                text = re.sub(r"\x1b\[[0-9;]*m", "", log.read())
            found = [int(t) for t in re.findall(r"active controller term=(\d+)", text)]
            terms[node] = max(found, default=-1)
        return max(terms, key=terms.get)

    def stop(self, extra=()):
        for child in extra:
            child.send_signal(signal.SIGTERM)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        for child in extra:
            child.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def time_to_write(bootstrap, topic, act, moved_from=None, survivor=None, phases=None):
    """Runs `act`, then produces one acks=all message to partition 0 of `topic` (once the
    metadata on `survivor` shows a leader other than `moved_from`, if given) and returns
    the seconds from `act` to its acknowledgement. With `moved_from`, the seconds until
    the survivor's metadata showed the new leader are appended to `phases`."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "retry.backoff.ms": 10, "retry.backoff.max.ms": 20,
                         "topic.metadata.refresh.interval.ms": 100,
                         "message.timeout.ms": 30000})
    warm = []
    producer.produce(topic, b"warm", partition=0, on_delivery=lambda e, m: warm.append(e))
    producer.flush(30)
    assert warm == [None], warm
    acked = []
    started = time.time()
    act()
    if moved_from is not None:
        admin = AdminClient({"bootstrap.servers": survivor})
        deadline = time.time() + 30
        while time.time() < deadline:
            metadata = admin.list_topics(topic=topic, timeout=5)
            if metadata.topics[topic].partitions[0].leader not in (moved_from, -1):
                break
            time.sleep(0.005)
        if phases is not None:
            phases.append(time.time() - started)
    producer.produce(topic, b"after", partition=0,
                     on_delivery=lambda e, m: acked.append((e, time.time())))
    producer.flush(30)
    assert acked and acked[0][0] is None, acked
    return acked[0][1] - started


def longest_gap(bootstrap, topic, act, before=1.0, after=3.0):
    """Writes to partition 0 of `topic` without pause (idempotent, acks=all, at most 1000
    unacknowledged), runs `act` after `before` seconds and carries on for `after` more:
    returns the longest time between two acknowledgements from `act` on, in seconds."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1,
                         "enable.idempotence": True, "message.timeout.ms": 30000})
    acks, errors = [], []

    def report(err, _msg):
        if err is None:
            acks.append(time.time())
        else:
            errors.append(err)

    sent = 0
    started = time.time()
    acted = None
    while time.time() < started + before + after:
        if acted is None and time.time() >= started + before:
            acted = time.time()
            act()
        if sent - len(acks) - len(errors) < 1000:
            producer.produce(topic, b"x" * 100, partition=0, on_delivery=report)
            sent += 1
        producer.poll(0.0005)
    assert producer.flush(30) == 0
    assert errors == [], errors[:3]
    times = [acted] + [t for t in acks if t >= acted]
    return max(b - a for a, b in zip(times, times[1:]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--spool", default="target/release/spool")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = Cluster(args.spool)
    restarted = []
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        rf3 = {"min.insync.replicas": "2"}
        for topic in ["acksall", "latency"]:
            admin.create_topics([NewTopic(topic, PARTITIONS, 3, config=rf3)])[topic].result(30)
        time.sleep(1)
        count = args.mb * 1024
        mbs = produce(cluster.bootstrap, "acksall", count, "all")
        print(f"produce acks=all, RF=3, minISR=2: {mbs:.0f} MB/s ({args.mb} MB)")
        p50, p99, p999, n = latency(cluster.bootstrap, "latency", 10000, 5)
        print(f"end-to-end latency at 10k msg/s, acks=all, RF=3: p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, p99.9 {p999:.2f} ms ({n} messages)")

        kills, moves, moved, gaps = [], [], [], []
        for round_ in range(args.rounds):
            controller = cluster.active_controller()
            victim = (controller + 1 + round_ % 2) % NODES
            others = [n for n in range(NODES) if n != victim]
            for kind, times in [("kill", kills), ("move", moves), ("busy", gaps)]:
                topic = f"{kind}-{round_}"
                admin.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[
                    [victim] + others], config=rf3)])[topic].result(30)
                time.sleep(1)
                pid = cluster.node_pid(victim)
                survivor = f"127.0.0.1:{BASE_PORT + others[0]}"
                if kind == "kill":
                    times.append(time_to_write(cluster.bootstrap, topic,
                                               lambda: os.kill(pid, signal.SIGKILL)))
                elif kind == "busy":
                    times.append(longest_gap(cluster.bootstrap, topic,
                                             lambda: os.kill(pid, signal.SIGTERM)))
                else:
                    times.append(time_to_write(cluster.bootstrap, topic,
                                               lambda: os.kill(pid, signal.SIGTERM),
                                               moved_from=victim, survivor=survivor,
                                               phases=moved))
                # The old process must be gone (and reaped, if started here) first.
                ours = [c for c in restarted if c.pid == pid]
                if ours:
                    ours[0].wait(timeout=60)
                gone_by = time.time() + 60
                while os.path.exists(f"/proc/{pid}") and time.time() < gone_by:
                    time.sleep(0.05)
                restarted.append(cluster.restart(victim))
                time.sleep(2)
        fmt = lambda xs: ", ".join(f"{x * 1000:.0f}" for x in xs)
        print(f"leader kill -9 to writable (ms, {args.rounds} rounds): {fmt(kills)}")
        print(f"graceful leadership move (SIGTERM) to writable (ms, {args.rounds} rounds): "
              f"{fmt(moves)}; of which until a survivor's metadata showed the new leader: "
              f"{fmt(moved)}")
        print(f"graceful leadership move (SIGTERM) under a busy idempotent producer, longest "
              f"gap between acknowledgements (ms, {args.rounds} rounds): {fmt(gaps)}")
    finally:
        cluster.stop(restarted)


if __name__ == "__main__":
    main()
