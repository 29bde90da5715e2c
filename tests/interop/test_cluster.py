"""Several spool processes as one cluster: `spool dev cluster`, and nodes started by hand
with cluster settings, driven by confluent-kafka and kcat."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SPOOL

CONTROLLER_OFFSET = 100
ADMIN_OFFSET = 200


def free_block(count, offsets=(0, CONTROLLER_OFFSET, ADMIN_OFFSET)):
    """A base port P such that P+offset..P+offset+count-1 are all free now, for each
    offset (by default P.., P+100.. and P+200.., as `spool dev cluster` uses them)."""
    for _ in range(100):
        base = random.randrange(20000, 40000)
        ports = [base + offset + i for offset in offsets for i in range(count)]
        try:
            sockets = []
            for port in ports:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise AssertionError("no free block of ports")


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def broker_ids(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(admin.list_topics(timeout=10).brokers)


def leaders(admin, topic):
    metadata = admin.list_topics(topic=topic, timeout=10)
    return {p.id: p.leader for p in metadata.topics[topic].partitions.values()}


def produce(bootstrap, topic, keys):
    """Idempotent, acks=all; returns {key: (partition, offset)} from the delivery reports."""
    delivered = {}
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.key().decode()] = (msg.partition(), msg.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    for key in keys:
        producer.produce(topic, key=key, value=f"value-{key}", on_delivery=report)
    assert producer.flush(30) == 0
    assert errors == []
    return delivered


def consume_all(bootstrap, topic, group, count):
    """Reads `count` records through a consumer group and commits; returns {key: value}."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = {}
    deadline = time.time() + 60
    while len(seen) < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        key = msg.key().decode()
        assert key not in seen, f"{key} read twice"
        seen[key] = msg.value().decode()
    consumer.commit(asynchronous=False)
    consumer.close()
    return seen


def wait_serving(process, name):
    """Waits for a `spool server` child to report that it serves ("spool: data in");
    returns its admin API's address (http://HOST:PORT), if it has one."""
    deadline = time.time() + 60
    admin = None
    while time.time() < deadline:
        line = process.stdout.readline()
        assert line, f"{name} stopped"
        if line.startswith("spool: admin API on "):
            admin = line.split()[-1]
        if line.startswith("spool: data in "):
            return admin
    raise AssertionError(f"{name} does not serve")


class DevCluster:
    def __init__(self, nodes):
        self.dir = tempfile.mkdtemp(prefix="spool-interop-cluster-")
        self.base = free_block(nodes)
        self.nodes = nodes
        self.process = subprocess.Popen(
            [SPOOL, "dev", "cluster", "--nodes", str(nodes), "--data-dir", self.dir,
             "--base-port", str(self.base), "--set", "broker.session.timeout.ms=3000",
             "--set", "broker.heartbeat.interval.ms=500"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.process.stdout.readline()
            assert line, "spool dev cluster stopped: " + "".join(self.lines)
            self.lines.append(line)
            if line.startswith("spool: cluster ready; bootstrap servers "):
                self.bootstrap = line.split()[-1]
                return
        raise AssertionError("no cluster: " + "".join(self.lines))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0
        rest = self.process.stdout.read()
        assert "spool: cluster stopped" in rest
        shutil.rmtree(self.dir, ignore_errors=True)


def test_dev_cluster_spreads_partitions_and_serves_groups_from_every_broker():
    cluster = DevCluster(3)
    try:
        assert cluster.bootstrap == ",".join(
            f"127.0.0.1:{cluster.base + i}" for i in range(3))
        # Each node serves clients on its own port and lists all three brokers.
        for i in range(3):
            assert wait_for("three brokers", lambda: broker_ids(
                f"127.0.0.1:{cluster.base + i}") == [0, 1, 2])
        # kcat sees the same cluster.
        listing = subprocess.run(["kcat", "-b", f"127.0.0.1:{cluster.base + 1}", "-L"],
                                 capture_output=True, text=True, timeout=30).stdout
        assert " 3 brokers:" in listing

        # A topic created through node 2 has leaders on every node.
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{cluster.base + 2}"})
        admin.create_topics([NewTopic("spread", 6, 1)])["spread"].result(timeout=30)
        placed = leaders(admin, "spread")
        assert sorted(placed) == list(range(6))
        assert set(placed.values()) == {0, 1, 2}

        keys = [f"k{i}" for i in range(600)]
        delivered = produce(cluster.bootstrap, "spread", keys)
        assert len(delivered) == 600
        per_partition = {}
        for partition, offset in delivered.values():
            per_partition.setdefault(partition, []).append(offset)
        # Offsets in each partition run from 0 without gaps: nothing written twice.
        for partition, offsets in per_partition.items():
            assert sorted(offsets) == list(range(len(offsets))), partition

        seen = consume_all(f"127.0.0.1:{cluster.base}", "spread", "readers", 600)
        assert seen == {k: f"value-{k}" for k in keys}

        # The group's offsets, asked through another node, are each partition's end.
        reader = Consumer({"bootstrap.servers": f"127.0.0.1:{cluster.base + 1}",
                           "group.id": "readers"})
        committed = reader.committed([TopicPartition("spread", p) for p in range(6)],
                                     timeout=30)
        reader.close()
        assert {tp.partition: tp.offset for tp in committed} == {
            p: len(per_partition.get(p, [])) for p in range(6)}
    finally:
        cluster.stop()


def test_cli_moves_a_partition_to_other_brokers():
    """`spool topic reassign` moves a one-replica partition from its broker to the two
    others; once `spool topic reassignments` lists nothing, confluent-kafka's metadata
    shows the new replicas and every record is still there. Cancelling with no move in
    progress is Kafka's NO_REASSIGNMENT_IN_PROGRESS, and a move to an unknown broker is
    refused."""
    cluster = DevCluster(3)
    try:
        boot = cluster.bootstrap
        created = spool_cli(boot, "topic", "create", "moved", "-p", "1", "-r", "1")
        assert created.returncode == 0, created.stderr
        keys = [f"k{i}" for i in range(200)]
        assert len(produce(boot, "moved", keys)) == 200
        described = json.loads(spool_cli(boot, "topic", "describe", "moved", "--json").stdout)
        before = described["partitions"][0]["replicas"]
        target = [n for n in range(3) if n not in before]
        assert len(before) == 1 and len(target) == 2
        listed = ",".join(map(str, target))
        moved = spool_cli(boot, "topic", "reassign", "moved", "-p", "0", "--replicas", listed)
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout == f"moving topic moved partition 0 to brokers {listed}\n"

        admin = AdminClient({"bootstrap.servers": boot})

        def done():
            ongoing = json.loads(spool_cli(boot, "topic", "reassignments", "--json").stdout)
            partition = admin.list_topics("moved", timeout=10).topics["moved"].partitions[0]
            return ongoing == [] and partition.replicas == target and sorted(partition.isrs) == sorted(target)
        assert wait_for("the move to finish", done)
        assert consume_all(boot, "moved", "after-move", 200) == {k: f"value-{k}" for k in keys}

        cancel = spool_cli(boot, "topic", "reassign", "moved", "-p", "0", "--cancel")
        assert cancel.returncode == 1
        assert "NO_REASSIGNMENT_IN_PROGRESS" in cancel.stderr and "topic moved partition 0" in cancel.stderr
        unknown = spool_cli(boot, "topic", "reassign", "moved", "-p", "0", "--replicas", "0,7")
        assert unknown.returncode == 1 and "topic moved partition 0" in unknown.stderr, unknown.stderr
        table = spool_cli(boot, "topic", "reassignments")
        assert table.returncode == 0 and table.stdout.split() == ["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]
    finally:
        cluster.stop()


def read_committed(bootstrap, topic, partitions, expect):
    """Every value a read_committed consumer sees in `topic`, reading until it has
    `expect` values and then a little longer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values = []
    deadline = time.time() + 60
    quiet_until = None
    while time.time() < deadline:
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
        if len(values) >= expect and quiet_until is None:
            quiet_until = time.time() + 2
        if quiet_until is not None and time.time() > quiet_until:
            break
    # The last stable offset reached each partition's end: no transaction left open.
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        position = consumer.position([TopicPartition(topic, p)])[0].offset
        assert position == high, (p, position, high)
    consumer.close()
    return values


def test_a_transaction_spanning_brokers_is_committed_or_aborted_on_each():
    cluster = DevCluster(3)
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic("ledger", 6, 1)])["ledger"].result(timeout=30)
        assert set(leaders(admin, "ledger").values()) == {0, 1, 2}
        producer = Producer({"bootstrap.servers": cluster.bootstrap,
                             "transactional.id": "ledger-writer"})
        producer.init_transactions(30)
        producer.begin_transaction()
        for i in range(60):
            producer.produce("ledger", key=f"k{i}", value=f"committed-{i}", partition=i % 6)
        producer.commit_transaction(30)
        producer.begin_transaction()
        for i in range(60):
            producer.produce("ledger", key=f"k{i}", value=f"aborted-{i}", partition=i % 6)
        producer.flush(30)
        producer.abort_transaction(30)
        producer.begin_transaction()
        producer.produce("ledger", key="last", value="committed-last", partition=5)
        producer.commit_transaction(30)

        values = read_committed(cluster.bootstrap, "ledger", 6, 61)
        assert sorted(values) == sorted([f"committed-{i}" for i in range(60)]
                                        + ["committed-last"])

        # Offsets committed in a transaction reach the group's coordinator, wherever it
        # is, only when the transaction commits.
        group = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "ledger-copier",
                          "enable.auto.commit": False})
        metadata = group.consumer_group_metadata()
        offsets = [TopicPartition("ledger", p, 7 + p) for p in range(6)]
        producer.begin_transaction()
        producer.send_offsets_to_transaction(offsets, metadata, 30)
        producer.abort_transaction(30)
        producer.begin_transaction()
        producer.send_offsets_to_transaction(offsets, metadata, 30)
        producer.commit_transaction(30)
        committed = group.committed([TopicPartition("ledger", p) for p in range(6)],
                                    timeout=30)
        group.close()
        assert {tp.partition: tp.offset for tp in committed} == {p: 7 + p for p in range(6)}
    finally:
        cluster.stop()


class Node:
    """`spool server` started by hand as one node of a cluster."""

    def __init__(self, data_dir, node_id, base, voters, settings=()):
        self.data_dir = data_dir
        self.node_id = node_id
        self.port = base + node_id
        self.args = [SPOOL, "server", "--data-dir", data_dir, "--listen",
                     f"PLAINTEXT://127.0.0.1:{self.port},"
                     f"CONTROLLER://127.0.0.1:{base + CONTROLLER_OFFSET + node_id}",
                     "--set", f"node.id={node_id}", "--set", f"controller.quorum.voters={voters}",
                     "--set", "broker.session.timeout.ms=3000",
                     "--set", "broker.heartbeat.interval.ms=500"]
        for setting in settings:
            self.args += ["--set", setting]
        self.start()

    def start(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)

    def wait_serving(self):
        self.admin = wait_serving(self.process, f"node {self.node_id}")

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=10)

def spool_cli(bootstrap, *args):
    return subprocess.run([SPOOL, "--brokers", bootstrap, *args], capture_output=True, text=True, timeout=60)


def stop_together(nodes):
    """SIGTERM to every running node at once (the last one left alone would wait out its
    controlled shutdown with no quorum to confirm it), then a clean exit from each."""
    running = [n for n in nodes if n.process.poll() is None]
    for node in running:
        node.process.send_signal(signal.SIGTERM)
    for node in running:
        assert node.process.wait(timeout=60) == 0


def test_nodes_started_by_hand_form_a_cluster_and_a_killed_node_rejoins():
    root = tempfile.mkdtemp(prefix="spool-interop-nodes-")
    base = free_block(3)
    voters = ",".join(f"{i}@127.0.0.1:{base + CONTROLLER_OFFSET + i}" for i in range(3))
    nodes = [Node(os.path.join(root, f"node-{i}"), i, base, voters) for i in range(3)]
    try:
        for node in nodes:
            node.wait_serving()
        bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("kept", 3, 1)])["kept"].result(timeout=30)
        placed = leaders(admin, "kept")
        keys = [f"k{i}" for i in range(90)]
        delivered = produce(bootstrap, "kept", keys)
        assert len(delivered) == 90

        # The CLI sees three brokers and a healthy cluster.
        info = json.loads(spool_cli(bootstrap, "cluster", "info", "--json").stdout)
        assert [b["node_id"] for b in info["brokers"]] == [0, 1, 2]
        assert info["controller_id"] in (0, 1, 2)
        healthy = spool_cli(bootstrap, "cluster", "health", "--json")
        assert healthy.returncode == 0 and json.loads(healthy.stdout)["healthy"] is True

        # kill -9 one node: once its session lapses the cluster stops listing it, and
        # its partition has no leader.
        victim = nodes[1]
        victim.kill()
        survivor = f"127.0.0.1:{nodes[0].port}"
        wait_for("the killed broker fenced", lambda: broker_ids(survivor) == [0, 2])
        orphaned = [p for p, leader in placed.items() if leader == 1]
        if orphaned:
            assert all(leaders(AdminClient({"bootstrap.servers": survivor}), "kept")[p] == -1
                       for p in orphaned)
            # `spool cluster health` names the partitions without a leader and fails.
            sick = spool_cli(survivor, "cluster", "health", "--json")
            assert sick.returncode == 1 and "not healthy" in sick.stderr
            report = json.loads(sick.stdout)
            assert report["healthy"] is False
            assert sorted(report["leaderless_partitions"]) == sorted(f"kept/{p}" for p in orphaned)

        # Started again by hand with the same flags, it rejoins and serves its data.
        victim.start()
        victim.wait_serving()
        wait_for("the broker back", lambda: broker_ids(survivor) == [0, 1, 2])
        assert leaders(admin, "kept") == placed
        seen = consume_all(bootstrap, "kept", "after-restart", 90)
        assert seen == {k: f"value-{k}" for k in keys}
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)


def metadata_files(node):
    """The snapshot files and log segments of a node's metadata log."""
    names = os.listdir(os.path.join(node.data_dir, "__cluster_metadata-0"))
    return ([n for n in names if n.endswith(".checkpoint") and "-" in n],
            sorted(n for n in names if n.endswith(".log")))


def purged(node):
    """The node has written a snapshot and removed its first metadata segment."""
    snapshots, segments = metadata_files(node)
    return snapshots and segments and segments[0] != "00000000000000000000.log"


def topic_names(bootstrap):
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {name for name in listed if not name.startswith("__")}


def test_a_node_behind_the_purged_metadata_log_catches_up_from_a_snapshot():
    """Small metadata segments, a snapshot every few kilobytes, and no retention beyond
    what a snapshot covers. While one node is down, topics created by a real admin client
    carry the metadata log past it and the others purge it. The node comes back through a
    snapshot sent by the active controller; then every node restarts from its own
    snapshot file, and all the topics are there, served by every broker."""
    root = tempfile.mkdtemp(prefix="spool-interop-snapshots-")
    base = free_block(3)
    voters = ",".join(f"{i}@127.0.0.1:{base + CONTROLLER_OFFSET + i}" for i in range(3))
    settings = ["metadata.log.max.record.bytes.between.snapshots=2048",
                "metadata.log.segment.bytes=4096", "metadata.max.retention.bytes=0"]
    nodes = [Node(os.path.join(root, f"node-{i}"), i, base, voters, settings) for i in range(3)]
    try:
        for node in nodes:
            node.wait_serving()
        victim = nodes[2]
        victim.kill()
        survivor = f"127.0.0.1:{nodes[0].port}"
        wait_for("the killed broker fenced", lambda: broker_ids(survivor) == [0, 1])
        admin = AdminClient({"bootstrap.servers": survivor})
        wanted = {f"snap-{i}" for i in range(40)}
        for name in sorted(wanted):
            admin.create_topics([NewTopic(name, 1, 2)])[name].result(timeout=30)
        wait_for("a snapshot and a purge on the running nodes",
                 lambda: all(purged(n) for n in nodes[:2]))

        victim.start()
        victim.wait_serving()
        wait_for("the node back", lambda: broker_ids(survivor) == [0, 1, 2])
        assert metadata_files(victim)[0], "the node that was away keeps the snapshot it got"
        assert topic_names(f"127.0.0.1:{victim.port}") == wanted

        stop_together(nodes)
        for node in nodes:
            assert purged(node) or node is victim, metadata_files(node)
            node.start()
        for node in nodes:
            node.wait_serving()
        bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        wait_for("every broker back", lambda: broker_ids(bootstrap) == [0, 1, 2])
        for node in nodes:
            assert topic_names(f"127.0.0.1:{node.port}") == wanted
        delivered = produce(bootstrap, "snap-7", [f"k{i}" for i in range(20)])
        assert sorted(offset for _, offset in delivered.values()) == list(range(20))
        assert len(consume_all(bootstrap, "snap-7", "after-snapshots", 20)) == 20
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)
