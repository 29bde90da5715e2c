"""Network partitions: three `spool server` processes, each in its own network namespace
on one bridge, driven by confluent-kafka from the host. One broker, the leader of a
replicated partition, is cut off from the other two with nftables rules (the test client
still reaches it): it must stop acknowledging acks=all writes, a new leader takes over,
and once the network heals the old leader drops what only it had and copies the new
leader's log. Then lossy links: nftables drops packets between the brokers at random
(`numgen random`) while an idempotent producer writes with acks=all; every record is
acknowledged once and read back once, in order. Needs root (namespaces, nftables):
skipped otherwise."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import ElectionType

from conftest import SPOOL
from test_cluster import wait_for, wait_serving

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
    reason="network partition tests need root with ip and nft (the test command installs "
           "nftables when it runs as root)")

SUBNET = "10.213.7"
HOST = f"{SUBNET}.254"
KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
TOPIC = "payments"
# Per rule: a packet between two brokers crosses two, so about twice this is lost.
LOSS_PERCENT = 10


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, text=True)


class Network:
    """A bridge on the host (address .254) and a namespace per broker (addresses .1-.3)."""

    def __init__(self, count):
        tag = f"spl{os.getpid() % 100000}"
        self.bridge = f"{tag}br"
        self.namespaces = [f"{tag}n{i}" for i in range(count)]
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{HOST}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            host_end, ns_end = f"{tag}h{i}", f"{tag}v{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", ns_end, "netns", ns)
            sh("ip", "link", "set", host_end, "master", self.bridge)
            sh("ip", "link", "set", host_end, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", ns_end)
            sh("ip", "-n", ns, "link", "set", ns_end, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def address(i):
        return f"{SUBNET}.{i + 1}"

    def filter(self, i, verdict):
        """Applies nftables `verdict` to every packet between broker `i` and the other
        brokers, both ways."""
        others = ", ".join(self.address(j) for j in range(len(self.namespaces)) if j != i)
        rules = (f"table inet spool_cut {{\n"
                 f"  chain in {{ type filter hook input priority 0; policy accept;"
                 f" ip saddr {{ {others} }} {verdict}; }}\n"
                 f"  chain out {{ type filter hook output priority 0; policy accept;"
                 f" ip daddr {{ {others} }} {verdict}; }}\n"
                 f"}}\n")
        subprocess.run(["ip", "netns", "exec", self.namespaces[i], "nft", "-f", "-"],
                       input=rules, check=True, capture_output=True, text=True)

    def cut(self, i):
        """Drops everything between broker `i` and the other brokers, both ways."""
        self.filter(i, "drop")

    def lossy(self, i, percent):
        """Drops `percent`% of the packets between broker `i` and the other brokers, at
        random, each way (a packet crosses two such rules: the sender's and the
        receiver's)."""
        self.filter(i, f"numgen random mod 100 < {percent} counter drop")

    def dropped(self, i):
        """How many packets broker `i`'s rules have dropped."""
        listing = subprocess.run(["ip", "netns", "exec", self.namespaces[i], "nft", "list",
                                  "table", "inet", "spool_cut"],
                                 check=True, capture_output=True, text=True).stdout
        return sum(int(n) for n in re.findall(r"packets (\d+)", listing))

    def heal(self, i):
        sh("ip", "netns", "exec", self.namespaces[i], "nft", "delete", "table", "inet",
           "spool_cut")

    def close(self):
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Broker:
    def __init__(self, network, root, i):
        self.i = i
        self.log = os.path.join(root, f"node-{i}.log")
        voters = ",".join(f"{j}@{network.address(j)}:{CONTROLLER_PORT}"
                          for j in range(len(network.namespaces)))
        address = network.address(i)
        args = ["ip", "netns", "exec", network.namespaces[i], SPOOL, "server",
                "--data-dir", os.path.join(root, f"node-{i}"),
                "--listen", f"PLAINTEXT://{address}:{KAFKA_PORT},"
                f"CONTROLLER://{address}:{CONTROLLER_PORT}",
                "--set", f"node.id={i}", "--set", f"controller.quorum.voters={voters}"]
        env = dict(os.environ, SPOOL_LOG="spool_metadata=info")
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log,
                                            text=True, env=env)
        self.bootstrap = f"{address}:{KAFKA_PORT}"

    def wait_serving(self):
        wait_serving(self.process, f"broker {self.i}")

    def controller_term(self):
        with open(self.log, errors="replace") as log:
            text = re.sub(r"\x1b\[[0-9;]*m", "", log.read())
        return max((int(t) for t in re.findall(r"active controller term=(\d+)", text)),
                   default=-1)


def partition_state(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    p = admin.list_topics(topic=TOPIC, timeout=10).topics[TOPIC].partitions[0]
    return p.leader, sorted(p.isrs)


def produce(bootstrap, values, acks, timeout_ms=30000):
    """Returns the values acknowledged, in order, and the errors."""
    acked, errors = [], []

    def report(err, msg):
        if err is None:
            acked.append(msg.value().decode())
        else:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks,
                         "message.timeout.ms": timeout_ms, "linger.ms": 0})
    for value in values:
        producer.produce(TOPIC, value=value, partition=0, on_delivery=report)
    producer.flush(timeout_ms / 1000 + 30)
    return acked, errors


def read_partition(bootstrap, count):
    """The values of the partition once its high watermark has reached `count`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "partition-check",
                         "enable.auto.commit": False})
    low, high = wait_for("the high watermark", lambda: (lambda w: w if w[1] >= count else None)(
        consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=30)))
    consumer.assign([TopicPartition(TOPIC, 0, low)])
    values, deadline = [], time.time() + 60
    while len(values) < high - low and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value().decode())
    consumer.close()
    return values


@contextmanager
def cluster(name):
    """Three brokers in their namespaces, serving: (network, brokers, bootstrap list)."""
    root = tempfile.mkdtemp(prefix=f"spool-interop-{name}-")
    network = Network(3)
    brokers = []
    try:
        brokers = [Broker(network, root, i) for i in range(3)]
        for broker in brokers:
            broker.wait_serving()
        yield network, brokers, ",".join(b.bootstrap for b in brokers)
    finally:
        for broker in brokers:
            broker.process.send_signal(signal.SIGTERM)
        for broker in brokers:
            try:
                broker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                broker.process.kill()
        network.close()
        shutil.rmtree(root, ignore_errors=True)


def test_an_isolated_leader_stops_acknowledging_and_truncates_after_healing():
    with cluster("partition") as (network, brokers, everyone):
        # The partition's leader is a broker that is not the active controller, so that
        # cutting it off moves the partition and nothing else.
        controller = max(brokers, key=Broker.controller_term).i
        leader = (controller + 1) % 3
        rest = [i for i in range(3) if i != leader]
        admin = AdminClient({"bootstrap.servers": everyone})
        admin.create_topics([NewTopic(TOPIC, num_partitions=1,
                                      replica_assignment=[[leader] + rest],
                                      config={"min.insync.replicas": "2"})])[TOPIC].result(30)
        wait_for("every replica in sync", lambda: partition_state(everyone) == (leader, [0, 1, 2]))
        before = [f"before-{i}" for i in range(100)]
        assert produce(everyone, before, "all") == (before, [])

        network.cut(leader)
        isolated = brokers[leader].bootstrap
        # acks=all through the cut-off leader: nothing is acknowledged.
        acked, errors = produce(isolated, [f"isolated-all-{i}" for i in range(20)], "all",
                                timeout_ms=5000)
        assert acked == [] and len(errors) == 20
        # acks=1 is the leader's word alone: it acknowledges what it will lose.
        lost, _ = produce(isolated, [f"isolated-one-{i}" for i in range(20)], "1",
                          timeout_ms=5000)
        majority = ",".join(brokers[i].bootstrap for i in rest)
        state = wait_for("a new leader among the others", lambda: (
            lambda s: s if s[0] in rest else None)(partition_state(majority)))
        assert leader not in state[1]
        after = [f"after-{i}" for i in range(100)]
        assert produce(majority, after, "all") == (after, [])

        network.heal(leader)
        wait_for("the old leader back in the ISR", lambda: partition_state(majority)[1] == [0, 1, 2],
                 timeout=60)
        expected = before + after
        assert read_partition(majority, len(expected)) == expected
        # Leading again (preferred election), the old leader serves the same log: what
        # only it had is gone.
        elected = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(TOPIC, 0)])
        for future in elected.values() if isinstance(elected, dict) else [elected]:
            future.result(30)
        wait_for("every broker seeing the old leader lead again", lambda: all(
            partition_state(b.bootstrap)[0] == leader for b in brokers))
        assert read_partition(isolated, len(expected)) == expected
        assert len(lost) > 0


def test_lossy_links_between_brokers_lose_and_duplicate_nothing():
    with cluster("lossy") as (network, brokers, everyone):
        admin = AdminClient({"bootstrap.servers": everyone})
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=3,
                                      config={"min.insync.replicas": "2"})])[TOPIC].result(30)
        wait_for("every replica in sync", lambda: partition_state(everyone)[1] == [0, 1, 2])
        for i in range(3):
            network.lossy(i, LOSS_PERCENT)
        values = [f"lossy-{i}" for i in range(400)]
        acked, errors = [], []

        def report(err, msg):
            (errors if err else acked).append(err or msg.value().decode())

        producer = Producer({"bootstrap.servers": everyone, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5,
                             "message.timeout.ms": 120000})
        for value in values:
            producer.produce(TOPIC, value=value, partition=0, on_delivery=report)
            producer.poll(0.01)
        assert producer.flush(150) == 0
        dropped = sum(network.dropped(i) for i in range(3))
        for i in range(3):
            network.heal(i)
        assert errors == []
        assert acked == values
        assert dropped > 0, "the rules dropped nothing"
        assert read_partition(everyone, len(values)) == values
        wait_for("every replica in sync again",
                 lambda: partition_state(everyone)[1] == [0, 1, 2], timeout=60)
