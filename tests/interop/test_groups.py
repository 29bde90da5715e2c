"""Consumer groups with real clients: members sharing partitions as they come, leave and
die; committed offsets surviving restarts; cooperative rebalancing; the admin clients'
view of groups and offsets."""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, commit, free_port

MEMBER = os.path.join(os.path.dirname(__file__), "group_member.py")


# Consumer group members (KIP-848) have their session timeout and heartbeat interval set
# by the broker: the same 6 s and 0.5 s the classic members ask for.
CONSUMER_GROUPS = ("group.consumer.session.timeout.ms=6000", "group.consumer.heartbeat.interval.ms=500")


@pytest.fixture
def group_broker():
    # No initial delay: members that arrive one by one rebalance at once.
    b = Broker("group.initial.rebalance.delay.ms=0", *CONSUMER_GROUPS)
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def create_topic(broker, name, partitions):
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic(name, partitions)])[name].result(timeout=30)


def produce_numbers(broker, topic, numbers, partitions):
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 5})
    for n in numbers:
        producer.produce(topic, str(n).encode(), partition=n % partitions)
    assert producer.flush(30) == 0


class Member:
    """A group member in its own process (group_member.py), read on a thread."""

    def __init__(self, client, broker, group, topic, strategy=None):
        args = [sys.executable, MEMBER, client, broker.address, group, topic]
        if strategy:
            args.append(strategy)
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.assigned = None
        self.topics = []
        self.history = []
        self.consumed = []
        self.uncommitted = []
        # The batch being committed: if the member dies now, it may be committed unreported.
        self.committing = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            event = json.loads(line)
            with self.lock:
                if "assigned" in event:
                    self.assigned = event["assigned"]
                    self.topics = event["topics"]
                    self.history.append(event["assigned"])
                if "committing" in event:
                    self.committing = event["committing"]
                if "consumed" in event or "uncommitted" in event:
                    self.committing = []
                self.consumed.extend(event.get("consumed", []))
                self.uncommitted.extend(event.get("uncommitted", []))

    def leave(self):
        self.process.stdin.write("leave\n")
        self.process.stdin.flush()
        assert self.process.wait(timeout=30) == 0

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process.poll() is None:
            self.kill()


def wait_for(condition, what, timeout=45, members=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    seen = [(m.history, len(m.consumed), len(m.uncommitted), m.process.poll()) for m in members]
    raise AssertionError(
        f"timed out waiting for {what}; members (assignments, consumed, uncommitted, exit): {seen}")


def shares(members, sizes):
    """The members' assignments have these sizes and together cover each partition once."""
    assigned = [m.assigned or [] for m in members]
    every = sorted(p for a in assigned for p in a)
    return sorted(len(a) for a in assigned) == sorted(sizes) and every == list(range(sum(sizes)))


@pytest.fixture
def delayed_group_broker():
    # Kafka's default initial delay: members starting together form one first generation.
    # (kafka-python 3.0.12 can hang for good when its first generation is followed at
    # once by a rebalance: its poll and heartbeat threads both stop after a SyncGroup.)
    b = Broker("group.initial.rebalance.delay.ms=3000", *CONSUMER_GROUPS)
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.mark.parametrize("client", ["confluent", "confluent-consumer", "kafka-python", "aiokafka"])
def test_members_share_partitions_take_over_and_consume_every_message(delayed_group_broker, client):
    """Three members on six partitions get two each; when one leaves and one is killed the
    survivors take over; a new one rejoins. Meanwhile numbered messages keep coming, and
    the committed consumption covers every one of them."""
    group_broker = delayed_group_broker
    topic, group, total = "numbers", f"group-{client}", 3000
    create_topic(group_broker, topic, 6)
    producing = threading.Thread(
        target=lambda: [produce_numbers(group_broker, topic, range(i, i + 100), 6) or time.sleep(0.2)
                        for i in range(0, total, 100)])
    producing.start()
    members = [Member(client, group_broker, group, topic) for _ in range(3)]
    try:
        wait_for(lambda: shares(members, [2, 2, 2]), "2 partitions each", members=members)
        members[0].leave()
        wait_for(lambda: shares(members[1:], [3, 3]), "the others take over after a leave", members=members)
        members[1].kill()
        started = time.time()
        wait_for(lambda: shares(members[2:], [6]), "takeover after the session timeout", members=members)
        # No LeaveGroup: the dead member held its partitions until its session lapsed.
        assert time.time() - started >= 3
        members.append(Member(client, group_broker, group, topic))
        wait_for(lambda: shares(members[2:], [3, 3]), "a rejoining member gets its share", members=members)
        producing.join(timeout=60)

        def consumed():
            # The killed member may have committed its last batch without reporting it.
            with members[1].lock:
                read = [members[1].committing] + [list(m.consumed) for m in members]
            return set(v for c in read for v in c)

        wait_for(lambda: len(consumed()) == total, "every message consumed and committed", timeout=60,
                 members=members)
        assert consumed() == {str(n) for n in range(total)}
        # At least once: a message is read twice only when a member died or lost the
        # partition before committing it (one batch at most per rebalance).
        reads = sum(len(m.consumed) for m in members)
        assert reads - total <= 1000, f"{reads - total} duplicates"
    finally:
        for m in members:
            m.stop()


def committed_offsets(broker, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def first_offsets_after_subscribe(broker, group, topic, partitions):
    """Subscribes as a new member and returns the first offset read from each partition."""
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    first = {}
    deadline = time.time() + 45
    try:
        while len(first) < partitions and time.time() < deadline:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                first.setdefault(m.partition(), m.offset())
        return first
    finally:
        consumer.close()


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_committed_offsets_survive_a_broker_restart(group_broker, how):
    topic, group = "ledger", f"resume-{how}"
    create_topic(group_broker, topic, 3)
    produce_numbers(group_broker, topic, range(60), 3)
    commit(group_broker.address, group, topic, {0: 4, 1: 11, 2: 19})
    if how == "graceful":
        group_broker.restart()
    else:
        group_broker.process.send_signal(signal.SIGKILL)
        group_broker.process.wait(timeout=10)
        group_broker.start()
    assert committed_offsets(group_broker, group, topic, 3) == {0: 4, 1: 11, 2: 19}
    assert first_offsets_after_subscribe(group_broker, group, topic, 3) == {0: 4, 1: 11, 2: 19}


def test_cooperative_sticky_members_keep_the_partitions_that_do_not_move(group_broker):
    topic, group = "sticky", "cooperative"
    create_topic(group_broker, topic, 6)
    members = [Member("confluent", group_broker, group, topic, "cooperative-sticky") for _ in range(2)]
    try:
        wait_for(lambda: shares(members, [3, 3]), "3 partitions each", members=members)
        before = [set(m.assigned) for m in members]
        seen = [len(m.history) for m in members]
        members.append(Member("confluent", group_broker, group, topic, "cooperative-sticky"))
        wait_for(lambda: shares(members, [2, 2, 2]), "2 partitions each", members=members)
        for m, kept, n in zip(members, before, seen):
            assert set(m.assigned) <= kept, "a cooperative member only gives partitions up"
            # Incremental: the member was never left with nothing in between (as an
            # eager member is, between revoking everything and its new assignment).
            assert all(m.history[n:]), m.history
    finally:
        for m in members:
            m.stop()


def test_admin_clients_list_describe_and_delete_groups_and_offsets(group_broker):
    topic, group = "admin-topic", "admin-group"
    create_topic(group_broker, topic, 2)
    produce_numbers(group_broker, topic, range(10), 2)
    member = Member("confluent", group_broker, group, topic)
    admin = AdminClient({"bootstrap.servers": group_broker.address})
    try:
        wait_for(lambda: member.assigned == [0, 1] and len(member.consumed) == 10, "the member reads everything")

        listed = admin.list_consumer_groups().result(timeout=30)
        states = {g.group_id: g.state.name for g in listed.valid}
        assert states[group] == "STABLE"
        described = admin.describe_consumer_groups([group])[group].result(timeout=30)
        assert described.state.name == "STABLE"
        assert described.partition_assignor == "range"
        [m] = described.members
        assert sorted(tp.partition for tp in m.assignment.topic_partitions) == [0, 1]
        assert m.host.startswith("/127.0.0.1")
        from confluent_kafka import ConsumerGroupTopicPartitions
        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
        assert {tp.partition: tp.offset for tp in offsets.topic_partitions} == {0: 5, 1: 5}

        # A group with members cannot be deleted; its subscribed offsets cannot either.
        with pytest.raises(KafkaException, match="NON_EMPTY_GROUP"):
            admin.delete_consumer_groups([group])[group].result(timeout=30)
        from kafka.admin import KafkaAdminClient
        from kafka.structs import TopicPartition as KTopicPartition
        kadmin = KafkaAdminClient(bootstrap_servers=group_broker.address)
        try:
            refused = kadmin.delete_group_offsets(group, [KTopicPartition(topic, 0)])
            assert {tp.partition: error.__name__ for tp, error in refused.items()} == {0: "GroupSubscribedToTopicError"}
            member.leave()
            empty = kadmin.list_groups(states_filter=["Empty"])
            assert [(g["group_id"], g["group_state"]) for g in empty] == [(group, "Empty")]
            assert kadmin.list_groups(states_filter=["Stable"]) == []
            deleted = kadmin.delete_group_offsets(group, [KTopicPartition(topic, 0)])
            assert {tp.partition: error.__name__ for tp, error in deleted.items()} == {0: "NoError"}
            assert committed_offsets(group_broker, group, topic, 2) == {0: -1001, 1: 5}
        finally:
            kadmin.close()

        admin.delete_consumer_groups([group])[group].result(timeout=30)
        listed = admin.list_consumer_groups().result(timeout=30)
        assert group not in {g.group_id for g in listed.valid}
        # DescribeGroups before v6 reports a group that does not exist as Dead.
        described = admin.describe_consumer_groups([group])[group].result(timeout=30)
        assert described.state.name == "DEAD" and described.members == []
    finally:
        member.stop()


@pytest.fixture
def fixed_port_broker():
    """A broker that comes back on the same port after a restart, so running clients
    reconnect to it."""
    b = Broker(f"listeners=PLAINTEXT://127.0.0.1:{free_port()}", "group.initial.rebalance.delay.ms=0", *CONSUMER_GROUPS)
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def test_consumer_protocol_assigns_incrementally_survives_restarts_and_follows_regex(fixed_port_broker):
    """KIP-848 (group.protocol=consumer): the broker assigns; a new member takes partitions
    without stopping the others; a broker restart keeps the group's epochs and assignment;
    a regular expression subscription picks up a topic created later; the admin client
    lists and describes the group as a consumer group."""
    from confluent_kafka import ConsumerGroupType

    group_broker = fixed_port_broker
    topic, group = "kip848-a", "kip848"
    create_topic(group_broker, topic, 6)
    produce_numbers(group_broker, topic, range(60), 6)
    members = [Member("confluent-consumer", group_broker, group, topic) for _ in range(2)]
    admin = AdminClient({"bootstrap.servers": group_broker.address})
    try:
        wait_for(lambda: shares(members, [3, 3]), "3 partitions each", members=members)
        before = [set(m.assigned) for m in members]
        seen = [len(m.history) for m in members]
        members.append(Member("confluent-consumer", group_broker, group, topic))
        wait_for(lambda: shares(members, [2, 2, 2]), "2 partitions each", members=members)
        for m, kept, n in zip(members, before, seen):
            assert set(m.assigned) <= kept, "a member only gives partitions up"
            assert all(m.history[n:]), f"a member was left with nothing in between: {m.history}"
        wait_for(lambda: sum(len(m.consumed) for m in members) >= 60, "everything read", members=members)

        listed = admin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(timeout=30)
        assert [(g.group_id, g.type.name, g.state.name) for g in listed.valid] == [(group, "CONSUMER", "STABLE")]
        classic = admin.list_consumer_groups(types={ConsumerGroupType.CLASSIC}).result(timeout=30)
        assert group not in {g.group_id for g in classic.valid}
        described = admin.describe_consumer_groups([group])[group].result(timeout=30)
        assert (described.type.name, described.state.name, described.partition_assignor) == ("CONSUMER", "STABLE", "uniform")
        assert sorted(len(m.assignment.topic_partitions) for m in described.members) == [2, 2, 2]
        assert all(tp.topic == topic for m in described.members for tp in m.assignment.topic_partitions)

        # The broker dies; the members carry on with the same partitions once it is back.
        assignments = [list(m.assigned) for m in members]
        group_broker.process.send_signal(signal.SIGKILL)
        group_broker.process.wait(timeout=10)
        group_broker.start()
        produce_numbers(group_broker, topic, range(60, 120), 6)
        wait_for(lambda: sum(len(m.consumed) for m in members) >= 120, "reading on after the restart",
                 members=members)
        assert [m.assigned for m in members] == assignments
        consumed = {v for m in members for v in m.consumed}
        assert consumed == {str(n) for n in range(120)}

        # A regular expression subscription follows topics as they are created.
        watcher = Member("confluent-consumer", group_broker, "kip848-regex", "^kip848-.*")
        members.append(watcher)
        wait_for(lambda: watcher.topics == [topic] and len(watcher.assigned) == 6, "the regex matches",
                 members=members)
        create_topic(group_broker, "kip848-b", 2)
        wait_for(lambda: watcher.topics == [topic, "kip848-b"] and len(watcher.assigned) == 8,
                 "the new topic is assigned", members=members)

        # Once its members have left, the group can be deleted (by a client connected after
        # the restart).
        admin = AdminClient({"bootstrap.servers": group_broker.address})
        for m in members[:3]:
            m.leave()
        wait_for(lambda: admin.describe_consumer_groups([group])[group].result(timeout=30).state.name == "EMPTY",
                 "the group empties", members=members)
        admin.delete_consumer_groups([group])[group].result(timeout=30)
        listed = admin.list_consumer_groups().result(timeout=30)
        assert group not in {g.group_id for g in listed.valid}
    finally:
        for m in members:
            m.stop()
