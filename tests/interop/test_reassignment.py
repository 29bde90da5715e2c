"""Partition reassignment on four `spool server` processes, driven with kafka-python's
admin client (AlterPartitionReassignments, ListPartitionReassignments) while a
confluent-kafka idempotent acks=all producer writes: a move to a broker that is down stays
listed until cancelled; a move from brokers {0,1,2} to {1,2,3}, which takes the leadership
away from broker 0, loses and duplicates nothing and stalls the producer only for the
leader switch; broker 0 then drops its copy. A move that takes broker 0 out of the
replicas while it stays up: the producer and a consumer on it find the new leader from
its NOT_LEADER_OR_FOLLOWER answers (KIP-951 leader hints), as librdkafka's log shows. A
throttled move copies at the set rate."""
import logging
import os
import re
import shutil
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from test_cluster import wait_for
from test_replication import kill_all, start_nodes

TOPIC = "moves"
# The longest the producer may go without an acknowledgement during the move.
MAX_STALL_S = 5.0


class Writer:
    """Writes keys 0, 1, 2, … to partition 0 of `topic` (idempotent, acks=all) until
    stopped; records each acknowledgement's offset and when it came. `settings` go to the
    producer."""

    def __init__(self, bootstrap, topic=TOPIC, **settings):
        self.bootstrap = bootstrap
        self.topic = topic
        self.settings = settings
        self.acked = {}
        self.ack_times = []
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 5, **self.settings})

        def report(err, msg):
            if err is not None:
                self.errors.append(str(err))
            else:
                self.acked[int(msg.key())] = msg.offset()
                self.ack_times.append(time.monotonic())

        key = 0
        while not self.stopping.is_set():
            if key - len(self.acked) - len(self.errors) < 1000:
                producer.produce(self.topic, key=str(key), value=f"move-{key}" * 20,
                                 partition=0, on_delivery=report)
                key += 1
            producer.poll(0.002)
        assert producer.flush(120) == 0

    def progresses(self, count=500):
        before = len(self.acked)
        wait_for("acknowledgements", lambda: len(self.acked) >= before + count, timeout=60)

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=180)
        assert not self.thread.is_alive()

    def longest_stall(self, since):
        times = [t for t in self.ack_times if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def replicas(admin):
    """Partition 0's (replicas, leader, sorted ISR) as the metadata says."""
    p = admin.list_topics(topic=TOPIC, timeout=10).topics[TOPIC].partitions[0]
    return p.replicas, p.leader, sorted(p.isrs)


def create_led_by_0(bootstrap):
    """Creates the topic, one partition on brokers 0, 1 and 2 (led by 0) with
    min.insync.replicas=2, and waits for its full ISR; returns the admin client."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(TOPIC, num_partitions=1, replica_assignment=[[0, 1, 2]],
                     config={"min.insync.replicas": "2"})
    admin.create_topics([topic])[TOPIC].result(30)
    wait_for("the partition's ISR", lambda: replicas(admin) == ([0, 1, 2], 0, [0, 1, 2]))
    return admin


def read_partition(bootstrap):
    """Every record of partition 0 from the start: {key: [offset, …]}."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify-moves",
                         "enable.auto.commit": False})
    _, high = consumer.get_watermark_offsets(CTopicPartition(TOPIC, 0), timeout=10)
    consumer.assign([CTopicPartition(TOPIC, 0, 0)])
    seen = {}
    offset = 0
    deadline = time.time() + 60
    while offset < high and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        seen.setdefault(int(msg.key()), []).append(msg.offset())
        offset = msg.offset() + 1
    consumer.close()
    assert offset >= high, f"read up to {offset} of {high}"
    return seen


def test_a_partition_moves_to_other_brokers_under_load_without_loss():
    root, nodes, bootstrap = start_nodes("spool-interop-moves-", 4)
    writer = None
    try:
        admin = create_led_by_0(bootstrap)
        tp = TopicPartition(TOPIC, 0)

        # A move to a broker that is down (registered, fenced) cannot complete: it is
        # listed as under way until cancelled, and the partition keeps serving meanwhile.
        nodes[3].stop()
        # (kafka-python gives up on a request sent to a broker it knew that went down.)
        live = ",".join(f"127.0.0.1:{n.port}" for n in nodes[:3])
        kadmin = KafkaAdminClient(bootstrap_servers=live, request_timeout_ms=30000)
        assert kadmin.alter_partition_reassignments({tp: [0, 1, 3]}) == {tp: None}
        ongoing = kadmin.list_partition_reassignments()
        assert ongoing == {tp: {"replicas": [0, 1, 3, 2], "adding_replicas": [3],
                                "removing_replicas": [2]}}, ongoing
        assert kadmin.list_partition_reassignments({TOPIC: [0]}) == ongoing
        writer = Writer(bootstrap)
        writer.progresses()
        assert kadmin.alter_partition_reassignments({tp: None}) == {tp: None}
        assert kadmin.list_partition_reassignments() == {}
        assert replicas(admin) == ([0, 1, 2], 0, [0, 1, 2])
        # Cancelling again: nothing is under way.
        refused = kadmin.alter_partition_reassignments({tp: None})
        assert refused[tp].__name__ == "NoReassignmentInProgressError", refused
        kadmin.close()
        nodes[3].start()
        nodes[3].wait_serving()
        writer.progresses()
        kadmin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)

        # The move itself, leader included, while the producer writes.
        started = time.monotonic()
        assert kadmin.alter_partition_reassignments({tp: [1, 2, 3]}) == {tp: None}
        wait_for("the move to complete", lambda: kadmin.list_partition_reassignments() == {},
                 timeout=60)
        wait_for("the new replicas in sync", lambda: replicas(admin)[0] == [1, 2, 3]
                 and replicas(admin)[2] == [1, 2, 3])
        _, leader, _ = replicas(admin)
        assert leader in (1, 2, 3)
        writer.progresses()
        moved_in = time.monotonic() - started
        writer.stop()
        stall = writer.longest_stall(started)
        print(f"move completed in {moved_in:.2f} s; longest producer stall {stall:.3f} s")

        assert writer.errors == [], writer.errors[:5]
        seen = read_partition(bootstrap)
        assert len(writer.acked) > 1000
        for key, offset in writer.acked.items():
            assert seen.get(key) == [offset], (key, offset, seen.get(key))
        assert stall < MAX_STALL_S, f"the producer stalled {stall:.2f} s"
        # Broker 0 no longer holds the partition.
        wait_for("broker 0 to drop its copy",
                 lambda: not os.path.exists(os.path.join(root, "node-0", f"{TOPIC}-0")))
        assert os.path.exists(os.path.join(root, "node-3", f"{TOPIC}-0"))
        kadmin.close()
    finally:
        if writer is not None and writer.thread.is_alive():
            writer.stopping.set()
            writer.thread.join(timeout=60)
        kill_all(nodes)
        shutil.rmtree(root, ignore_errors=True)


class Lines(logging.Handler):
    """The log lines of a librdkafka client (its `logger`)."""

    def __init__(self, name):
        super().__init__()
        self.lines = []
        self.logger = logging.getLogger(name)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def leader_hints(self):
        """(leader, epoch) of each update librdkafka took from a NOT_LEADER_OR_FOLLOWER
        answer's leader hint (KIP-951) for partition 0, rather than from Metadata."""
        return [(int(m[1]), int(m[2])) for line in self.lines
                if (m := re.search(r"\[0\]: updated with leader (\d+) and epoch (\d+)", line))]


class Follower:
    """A consumer of partition 0 from offset 0, reading in a thread until stopped:
    {key: offset} of what it read."""

    def __init__(self, bootstrap, **settings):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "follow",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                                  **settings})
        self.consumer.assign([CTopicPartition(TOPIC, 0, 0)])
        self.read = {}
        self.duplicates = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            key = int(msg.key())
            if key in self.read:
                self.duplicates.append(key)
            self.read[key] = msg.offset()
        self.consumer.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def test_a_broker_that_lost_the_leadership_points_clients_to_the_new_leader():
    """A move from brokers {0,1,2} to {1,2} takes leadership and its copy away from broker
    0, which stays up. The producer writing to it and the consumer reading from it get
    NOT_LEADER_OR_FOLLOWER with the new leader and its endpoint (KIP-951) and go there
    without waiting for Metadata: librdkafka logs the update it took from the answer. No
    record is lost or duplicated on either side."""
    root, nodes, bootstrap = start_nodes("spool-interop-hints-", 3)
    writer = follower = None
    try:
        admin = create_led_by_0(bootstrap)
        produced, consumed = Lines("hints-producer"), Lines("hints-consumer")
        writer = Writer(bootstrap, debug="metadata", logger=produced.logger)
        follower = Follower(bootstrap, debug="metadata", logger=consumed.logger)
        writer.progresses()
        wait_for("the consumer reading", lambda: len(follower.read) >= 500)
        assert produced.leader_hints() == consumed.leader_hints() == []

        kadmin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
        tp = TopicPartition(TOPIC, 0)
        started = time.monotonic()
        assert kadmin.alter_partition_reassignments({tp: [1, 2]}) == {tp: None}
        wait_for("the move to complete", lambda: kadmin.list_partition_reassignments() == {})
        kadmin.close()
        wait_for("broker 0 out of the replicas", lambda: replicas(admin)[0] == [1, 2])
        _, leader, _ = replicas(admin)
        assert leader in (1, 2)
        writer.progresses()
        writer.stop()
        stall = writer.longest_stall(started)
        print(f"longest producer stall across the leader move: {stall * 1000:.0f} ms")
        assert writer.errors == [], writer.errors[:5]
        wait_for("the consumer to read every acknowledged record",
                 lambda: writer.acked.keys() <= follower.read.keys())
        follower.stop()
        assert follower.duplicates == [], follower.duplicates[:5]
        assert {k: follower.read[k] for k in writer.acked} == writer.acked
        seen = read_partition(bootstrap)
        for key, offset in writer.acked.items():
            assert seen.get(key) == [offset], (key, offset, seen.get(key))

        # Both clients took the new leader from broker 0's answers.
        for client, lines in (("producer", produced), ("consumer", consumed)):
            hints = lines.leader_hints()
            assert hints, f"the {client} never took a leader hint"
            assert {h[0] for h in hints} == {leader}, (client, hints)
            assert all(epoch > 0 for _, epoch in hints), (client, hints)
        assert stall < MAX_STALL_S, f"the producer stalled {stall:.2f} s"
    finally:
        for client in (writer, follower):
            if client is not None and client.thread.is_alive():
                client.stopping.set()
                client.thread.join(timeout=60)
        kill_all(nodes)
        shutil.rmtree(root, ignore_errors=True)


def test_a_throttled_move_copies_at_the_set_rate():
    """With `*.replication.throttled.replicas=*` on the topic and both rates at 300 kB/s set
    on each broker, moving 1.5 MB to a new broker takes seconds, not the fraction of a second
    it takes unthrottled; the copy is whole."""
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       ResourceType)
    root, nodes, bootstrap = start_nodes("spool-interop-throttle-", 4)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, num_partitions=1,
                                      replica_assignment=[[0, 1, 2]])])[TOPIC].result(30)
        wait_for("the partition's ISR", lambda: replicas(admin) == ([0, 1, 2], 0, [0, 1, 2]))
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
        for i in range(1500):
            producer.produce(TOPIC, key=str(i), value=os.urandom(1000), partition=0)
            producer.poll(0)
        assert producer.flush(60) == 0

        def alter(resource, entries):
            resource.incremental_configs = [
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in entries.items()]
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(30)

        alter(ConfigResource(ResourceType.TOPIC, TOPIC),
              {"leader.replication.throttled.replicas": "*",
               "follower.replication.throttled.replicas": "*"})
        for node in nodes:
            alter(ConfigResource(ResourceType.BROKER, str(node.node_id)),
                  {"leader.replication.throttled.rate": "300000",
                   "follower.replication.throttled.rate": "300000"})
        described = admin.describe_configs([ConfigResource(ResourceType.BROKER, "2")])
        rate = list(described.values())[0].result(30)["leader.replication.throttled.rate"]
        assert (rate.value, rate.is_read_only) == ("300000", False), rate
        time.sleep(0.5)  # every broker applies the settings
        kadmin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
        tp = TopicPartition(TOPIC, 0)
        started = time.monotonic()
        assert kadmin.alter_partition_reassignments({tp: [1, 2, 3]}) == {tp: None}
        time.sleep(1.5)
        assert tp in kadmin.list_partition_reassignments(), "still copying"
        wait_for("the move to complete", lambda: kadmin.list_partition_reassignments() == {},
                 timeout=60)
        took = time.monotonic() - started
        print(f"1.5 MB moved at 300 kB/s in {took:.2f} s")
        # A second's burst, then 300 kB/s: at least about 4 s for 1.5 MB.
        assert took > 3.0, took
        wait_for("the new replicas in sync", lambda: replicas(admin)[2] == [1, 2, 3])
        kadmin.close()
        consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{nodes[3].port}",
                             "group.id": "check-throttled"})
        low, high = consumer.get_watermark_offsets(CTopicPartition(TOPIC, 0), timeout=10)
        consumer.close()
        assert (low, high) == (0, 1500)
        assert os.path.getsize(os.path.join(root, "node-3", f"{TOPIC}-0",
                                            "00000000000000000000.log")) > 1_500_000
    finally:
        kill_all(nodes)
        shutil.rmtree(root, ignore_errors=True)
