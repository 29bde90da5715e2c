"""Fetching from the closest replica (KIP-392) on three `spool server` processes in racks
rack-0, rack-1 and rack-2, with `replica.selector.class` set to the rack-aware selector:
a confluent-kafka consumer whose `client.rack` is a follower's rack reads every record
from that follower, new records as they are committed, and only committed transactions
with read_committed; a consumer in the leader's rack reads from the leader; when the
follower is killed, the consumer carries on from the leader."""
import json
import shutil
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from test_cluster import wait_for
from test_replication import kill_all, start_nodes

TOPIC = "nearby"
RACK_AWARE = "org.apache.kafka.common.replica.RackAwareReplicaSelector"


def rack_settings(node_id):
    return [f"broker.rack=rack-{node_id}", f"replica.selector.class={RACK_AWARE}",
            "replica.socket.timeout.ms=20000"]


def leader_and_isr(admin):
    metadata = admin.list_topics(topic=TOPIC, timeout=10)
    partition = metadata.topics[TOPIC].partitions[0]
    return partition.leader, sorted(partition.isrs)


def produce(bootstrap, first, count, **settings):
    """Keys first..first+count, acks=all; returns {key: offset}."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         **settings})
    acked = {}

    def report(err, msg):
        assert err is None, err
        acked[int(msg.key())] = msg.offset()

    for key in range(first, first + count):
        producer.produce(TOPIC, key=str(key), value=f"near-{key}", partition=0,
                         on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert len(acked) == count
    return acked


class Reader:
    """A consumer of partition 0 in `rack`, with librdkafka's statistics: which broker it
    fetches from and how many Fetch requests each broker got."""

    def __init__(self, bootstrap, rack, **settings):
        self.stats = {}
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"in-{rack}",
                                  "client.rack": rack, "enable.auto.commit": False,
                                  "statistics.interval.ms": 100, "stats_cb": self.on_stats,
                                  "fetch.wait.max.ms": 100, **settings})
        self.consumer.assign([TopicPartition(TOPIC, 0, 0)])
        self.read = {}

    def on_stats(self, text):
        self.stats = json.loads(text)

    def read_until(self, keys, timeout=30):
        """Reads until every key in `keys` has been seen: {key: offset} of what was read."""
        deadline = time.time() + timeout
        while not keys <= self.read.keys() and time.time() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            key = int(msg.key())
            assert key not in self.read, f"key {key} read twice"
            self.read[key] = msg.offset()
        missing = keys - self.read.keys()
        assert not missing, f"{len(missing)} records not read, e.g. {sorted(missing)[:5]}"

    def fetching_from(self):
        """(leader, broker fetched from) as the newest statistics say."""
        partition = self.stats.get("topics", {}).get(TOPIC, {}).get("partitions", {}).get("0")
        return (partition["leader"], partition["broker"]) if partition else None

    def fetches_by_broker(self):
        return {b["nodeid"]: b["req"].get("Fetch", 0)
                for b in self.stats.get("brokers", {}).values() if b["nodeid"] >= 0}

    def wait_fetching_from(self, leader, broker):
        def settled():
            self.consumer.poll(0.1)
            return self.fetching_from() == (leader, broker)
        wait_for(f"fetching from broker {broker}", settled)

    def close(self):
        self.consumer.close()


def test_a_consumer_reads_from_the_follower_in_its_rack():
    root, nodes, bootstrap = start_nodes("spool-interop-racks-", 3, rack_settings)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        described = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")])
        configs = list(described.values())[0].result(30)
        assert configs["replica.selector.class"].value == RACK_AWARE
        assert configs["replica.socket.timeout.ms"].value == "20000"
        admin.create_topics([NewTopic(TOPIC, 1, 3)])[TOPIC].result(timeout=30)
        wait_for("a full ISR", lambda: len(leader_and_isr(admin)[1]) == 3)
        leader, _ = leader_and_isr(admin)
        follower = (leader + 1) % 3

        acked = produce(bootstrap, 0, 500)
        assert sorted(acked.values()) == list(range(500))
        near = Reader(bootstrap, f"rack-{follower}")
        near.read_until(set(acked))
        assert near.read == acked
        near.wait_fetching_from(leader, follower)
        # Records committed while it reads reach it through the follower too.
        more = produce(bootstrap, 500, 300)
        near.read_until(set(more))
        assert {k: near.read[k] for k in more} == more
        assert near.fetching_from() == (leader, follower)
        fetches = near.fetches_by_broker()
        assert fetches[follower] > 0, fetches

        # A consumer in the leader's rack stays on the leader.
        local = Reader(bootstrap, f"rack-{leader}")
        local.read_until(set(acked) | set(more))
        local.wait_fetching_from(leader, leader)
        local.close()

        # read_committed on the follower: the aborted transaction's records are skipped.
        txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": "near-txn"})
        txn.init_transactions(30)
        for key, commit in [(800, False), (801, True)]:
            txn.begin_transaction()
            txn.produce(TOPIC, key=str(key), value="txn", partition=0)
            txn.flush(30)
            if commit:
                txn.commit_transaction(30)
            else:
                txn.abort_transaction(30)
        committed = Reader(bootstrap, f"rack-{follower}", **{"isolation.level": "read_committed"})
        committed.read_until(set(acked) | set(more) | {801})
        assert 800 not in committed.read
        committed.wait_fetching_from(leader, follower)
        committed.close()

        # The follower dies: the consumer goes back to the leader and reads on.
        nodes[follower].process.kill()
        nodes[follower].process.wait(timeout=10)
        last = produce(bootstrap, 900, 200)
        near.read_until(set(last), timeout=60)
        assert {k: near.read[k] for k in last} == last
        near.close()
    finally:
        kill_all(nodes)
        shutil.rmtree(root, ignore_errors=True)
