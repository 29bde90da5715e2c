"""Transactions with real clients: commits and aborts seen by read_committed and
read_uncommitted consumers, consume-transform-produce with offsets in the transaction,
zombie fencing, and transactions a timeout aborts."""
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, free_port
from fault_proxy import FaultProxy

WORKER = os.path.join(os.path.dirname(__file__), "txn_worker.py")


# Timed-out transactions are looked for every second instead of every ten.
TXN_SETTINGS = ("num.partitions=3", "group.initial.rebalance.delay.ms=0",
                "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000")


@pytest.fixture
def restartable_broker():
    b = Broker(f"listeners=PLAINTEXT://127.0.0.1:{free_port()}", *TXN_SETTINGS)
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def kill_and_restart(broker):
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(timeout=10)
    broker.start()


@pytest.fixture
def txn_broker():
    # Timed-out transactions are looked for every second instead of every ten.
    b = Broker("num.partitions=3", "group.initial.rebalance.delay.ms=0",
               "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def create_topic(broker, name, partitions=3):
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic(name, partitions)])[name].result(timeout=30)


def consume_all(broker, topic, isolation, partitions=3, idle=3.0, expect=None):
    """Every value in `topic` an `isolation` consumer sees, per partition in order."""
    consumer = Consumer({
        "bootstrap.servers": broker.address,
        "group.id": f"reader-{isolation}-{time.time()}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = {p: [] for p in range(partitions)}
    last = time.time()
    deadline = time.time() + 60
    while time.time() - last < idle and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            if expect is not None and sum(map(len, seen.values())) >= expect:
                break
            continue
        assert not message.error(), message.error()
        seen[message.partition()].append(message.value().decode())
        last = time.time()
    consumer.close()
    return seen


def flat(seen):
    return sorted(v for values in seen.values() for v in values)


def confluent_transactions(broker, topic, txn_id, outcomes):
    producer = Producer({"bootstrap.servers": broker.address, "transactional.id": txn_id})
    producer.init_transactions(30)
    for n, commit in enumerate(outcomes):
        producer.begin_transaction()
        for i in range(9):
            producer.produce(topic, value=f"t{n}-{i}".encode(), partition=i % 3)
        # Everything reaches the broker before the end: an abort then has records to hide.
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


def kafka_python_transactions(broker, topic, txn_id, outcomes):
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.address, transactional_id=txn_id)
    producer.init_transactions()
    for n, commit in enumerate(outcomes):
        producer.begin_transaction()
        for i in range(9):
            producer.send(topic, value=f"t{n}-{i}".encode(), partition=i % 3)
        producer.flush()
        if commit:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
    producer.close()


def aiokafka_transactions(broker, topic, txn_id, outcomes):
    from aiokafka import AIOKafkaProducer

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=broker.address, transactional_id=txn_id)
        await producer.start()
        try:
            for n, commit in enumerate(outcomes):
                await producer.begin_transaction()
                sent = [await producer.send(topic, value=f"t{n}-{i}".encode(), partition=i % 3)
                        for i in range(9)]
                await asyncio.gather(*sent)
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(run())


PRODUCERS = {
    "confluent-kafka": confluent_transactions,
    "kafka-python": kafka_python_transactions,
    "aiokafka": aiokafka_transactions,
}


@pytest.mark.parametrize("client", PRODUCERS)
def test_read_committed_sees_exactly_the_committed_records(txn_broker, client):
    topic = f"payments-{client}"
    create_topic(txn_broker, topic)
    outcomes = [True, False, True, False, True]
    PRODUCERS[client](txn_broker, topic, f"txn-{client}", outcomes)
    committed = {p: [] for p in range(3)}
    everything = {p: [] for p in range(3)}
    for n, commit in enumerate(outcomes):
        for i in range(9):
            everything[i % 3].append(f"t{n}-{i}")
            if commit:
                committed[i % 3].append(f"t{n}-{i}")
    assert consume_all(txn_broker, topic, "read_committed", expect=27) == committed
    assert consume_all(txn_broker, topic, "read_uncommitted", expect=45) == everything


def test_a_new_instance_fences_the_old_one_and_its_open_transaction_is_aborted(txn_broker):
    topic = "fenced"
    create_topic(txn_broker, topic)
    old = Producer({"bootstrap.servers": txn_broker.address, "transactional.id": "zombie"})
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, value=b"from-the-zombie", partition=0)
    old.flush(30)
    new = Producer({"bootstrap.servers": txn_broker.address, "transactional.id": "zombie"})
    new.init_transactions(30)
    new.begin_transaction()
    new.produce(topic, value=b"from-the-new-one", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as fenced:
        old.produce(topic, value=b"late", partition=0)
        old.commit_transaction(30)
    assert fenced.value.args[0].code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                           KafkaError.INVALID_PRODUCER_EPOCH), fenced.value
    seen = consume_all(txn_broker, topic, "read_committed", partitions=1, expect=1)
    assert seen == {0: ["from-the-new-one"]}


def test_consume_transform_produce_commits_output_and_offsets_together(txn_broker):
    """A copier reads `input` in a group and writes `output` in transactions that also
    commit its offsets; one transaction in three is aborted and redone. Each input record
    reaches the output exactly once, in order per partition."""
    create_topic(txn_broker, "input")
    create_topic(txn_broker, "output")
    source = Producer({"bootstrap.servers": txn_broker.address, "enable.idempotence": True})
    for i in range(600):
        source.produce("input", value=str(i).encode(), partition=i % 3)
    source.flush(30)

    group = "copier"
    producer = Producer({"bootstrap.servers": txn_broker.address, "transactional.id": "copier-1"})
    producer.init_transactions(30)
    attempt = 0
    copied = 0
    while copied < 600:
        consumer = Consumer({
            "bootstrap.servers": txn_broker.address, "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        })
        consumer.subscribe(["input"])
        batch = consumer.consume(num_messages=50, timeout=10)
        batch = [m for m in batch if not m.error()]
        if not batch:
            consumer.close()
            continue
        producer.begin_transaction()
        for message in batch:
            producer.produce("output", value=message.value(), partition=message.partition())
        positions = consumer.position(consumer.assignment())
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        attempt += 1
        if attempt % 3 == 0:
            producer.flush(30)
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            copied += len(batch)
        # A fresh consumer each round resumes from the committed offsets.
        consumer.close()

    expected = {p: [str(i) for i in range(600) if i % 3 == p] for p in range(3)}
    assert consume_all(txn_broker, "output", "read_committed", expect=600) == expected
    admin = AdminClient({"bootstrap.servers": txn_broker.address})
    from confluent_kafka import ConsumerGroupTopicPartitions
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    offsets = result[group].result(timeout=30).topic_partitions
    assert sorted((tp.partition, tp.offset) for tp in offsets if tp.topic == "input") == \
        [(0, 200), (1, 200), (2, 200)]


def test_a_transaction_left_open_is_aborted_by_its_timeout(txn_broker):
    topic = "abandoned"
    create_topic(txn_broker, topic)
    producer = Producer({"bootstrap.servers": txn_broker.address, "transactional.id": "abandoned",
                         "transaction.timeout.ms": 3000})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"never-committed", partition=0)
    producer.flush(30)
    # The producer goes away without ending its transaction.
    del producer
    after = Producer({"bootstrap.servers": txn_broker.address, "enable.idempotence": True})
    after.produce(topic, value=b"after", partition=0)
    after.flush(30)
    # Until the coordinator aborts it, the open transaction holds read_committed back.
    assert consume_all(txn_broker, topic, "read_committed", partitions=1, idle=1.0) == {0: []}
    deadline = time.time() + 30
    seen = {0: []}
    while time.time() < deadline and seen[0] != ["after"]:
        seen = consume_all(txn_broker, topic, "read_committed", partitions=1, idle=1.0, expect=1)
    assert seen == {0: ["after"]}


def test_broker_killed_mid_transaction_never_exposes_aborted_records(restartable_broker):
    """A producer runs transactions while the broker is SIGKILLed ten times at random
    moments. Afterwards read_committed shows every confirmed commit whole, no confirmed
    abort, and each transaction whole or not at all; the transactions the kills left open
    are ended by the broker alone (a later commit becomes visible, so nothing holds the
    last stable offset)."""
    broker = restartable_broker
    create_topic(broker, "chaos")
    stop_file = os.path.join(broker.data_dir, "..", f"stop-{os.getpid()}-{time.time()}")
    worker = subprocess.Popen([sys.executable, WORKER, "chaos", broker.address, "chaos", stop_file],
                              stdout=subprocess.PIPE, text=True)
    rng = random.Random(int(os.environ.get("SPOOL_TEST_SEED", time.time())))
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.3, 1.5))
            kill_and_restart(broker)
        time.sleep(2)
    finally:
        open(stop_file, "w").close()
        out, _ = worker.communicate(timeout=90)
        os.remove(stop_file)
    outcomes = {}
    for line in out.splitlines():
        word, n = line.split()[:2]
        outcomes[int(n)] = word
    committed = {n for n, w in outcomes.items() if w == "committed"}
    aborted = {n for n, w in outcomes.items() if w == "aborted"}
    assert len(committed) >= 10, f"too little progress: {outcomes}"

    final = Producer({"bootstrap.servers": broker.address, "transactional.id": "after-the-storm"})
    final.init_transactions(30)
    final.begin_transaction()
    for p in range(3):
        final.produce("chaos", value=f"final:{p}".encode(), partition=p)
    final.commit_transaction(30)

    deadline = time.time() + 60
    while True:
        seen = consume_all(broker, "chaos", "read_committed", idle=1.0)
        if all(values and values[-1] == f"final:{p}" for p, values in seen.items()):
            break
        assert time.time() < deadline, "the last stable offset never passed the open transactions"
    visible = {}
    for p, values in seen.items():
        numbers = [int(v.split(":")[0]) for v in values[:-1]]
        assert numbers == sorted(numbers), f"partition {p} out of order"
        for v in values[:-1]:
            n, i = map(int, v.split(":"))
            visible.setdefault(n, []).append(i)
    assert not (aborted & visible.keys()), "an aborted transaction is visible"
    assert committed <= visible.keys(), f"committed but missing: {sorted(committed - visible.keys())}"
    for n, records in visible.items():
        assert sorted(records) == list(range(6)), f"transaction {n} is not whole: {records}"


def test_consume_transform_produce_survives_a_killed_copier(txn_broker):
    """100k numbered messages copied from input to output by a transactional copier that
    is SIGKILLed and restarted four times: the output equals the input exactly once, in
    order per partition."""
    total = 100_000
    create_topic(txn_broker, "ledger-in")
    create_topic(txn_broker, "ledger-out")
    source = Producer({"bootstrap.servers": txn_broker.address, "enable.idempotence": True,
                       "linger.ms": 20})
    for i in range(total):
        source.produce("ledger-in", value=str(i).encode(), partition=i % 3)
        if i % 10_000 == 0:
            source.poll(0)
    source.flush(60)
    rng = random.Random(int(os.environ.get("SPOOL_TEST_SEED", time.time())))
    args = [sys.executable, WORKER, "copy", txn_broker.address, "ledger-in", "ledger-out", "ledger"]
    for _ in range(4):
        copier = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(1.0, 3.0))
        copier.send_signal(signal.SIGKILL)
        copier.communicate(timeout=30)
    last = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=300)
    assert last.returncode == 0
    expected = {p: [str(i) for i in range(p, total, 3)] for p in range(3)}
    seen = consume_all(txn_broker, "ledger-out", "read_committed", expect=total)
    for p in range(3):
        assert len(seen[p]) == len(expected[p]), f"partition {p}: {len(seen[p])} records"
        assert seen[p] == expected[p], f"partition {p} differs"


def test_idempotent_producer_through_dropped_connections_writes_each_record_once():
    """While an idempotent producer sends, a proxy cuts its connections 25 times, 100-250
    ms apart, each time first swallowing the broker's answers for 50 ms, so the producer
    retries batches the broker already wrote: the log holds every record exactly once, in
    order, with no gap."""
    proxy_port = free_port()
    broker = Broker("num.partitions=3", f"listeners=PLAINTEXT://127.0.0.1:{free_port()}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port}")
    host, port = broker.address.rsplit(":", 1)
    proxy = FaultProxy(host, int(port), proxy_port)
    try:
        create_topic_via = AdminClient({"bootstrap.servers": f"127.0.0.1:{proxy_port}"})
        create_topic_via.create_topics([NewTopic("retried", 3)])["retried"].result(timeout=30)
        producer = Producer({
            "bootstrap.servers": f"127.0.0.1:{proxy_port}",
            "enable.idempotence": True,
            "linger.ms": 2,
            "batch.num.messages": 200,
            "message.timeout.ms": 120000,
            # Back at once after each cut, so that the cuts land on traffic.
            "reconnect.backoff.ms": 10,
            "reconnect.backoff.max.ms": 100,
        })
        failures = []
        total = 20_000
        # The producer has its producer ID before the faults begin.
        producer.produce("retried", value=b"0", partition=0)
        producer.flush(30)
        rng = random.Random(int(os.environ.get("SPOOL_TEST_SEED", time.time())))
        producing = threading.Event()
        producing.set()

        def cutter():
            for _ in range(25):
                time.sleep(rng.uniform(0.1, 0.25))
                if not producing.is_set():
                    return
                proxy.cut(swallow_ms=50)

        cuts = threading.Thread(target=cutter)
        cuts.start()
        try:
            for i in range(1, total):
                producer.produce("retried", value=str(i).encode(), partition=i % 3,
                                 on_delivery=lambda err, msg: err and failures.append(err))
                producer.poll(0)
                if i % 50 == 0:
                    time.sleep(0.01)
            producer.flush(120)
        finally:
            producing.clear()
            cuts.join()
        assert failures == []
        assert proxy.cuts >= 10, f"only {proxy.cuts} cuts while producing"
        # Read back through the proxy (the address the broker advertises), uncut now.
        via_proxy = Broker.__new__(Broker)
        via_proxy.address = f"127.0.0.1:{proxy_port}"
        seen = consume_all(via_proxy, "retried", "read_uncommitted", expect=total)
        for p in range(3):
            assert seen[p] == [str(i) for i in range(p, total, 3)], f"partition {p} differs"
    finally:
        proxy.close()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def markers_on_disk(broker, topic):
    """The transaction markers in partition 0's segment files: record batches (v2 layout:
    length at byte 8, attributes at byte 21) with the control bit set."""
    directory = os.path.join(broker.data_dir, f"{topic}-0")
    count = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(directory, name), "rb") as segment:
            data = segment.read()
        position = 0
        while position + 61 <= len(data):
            length = int.from_bytes(data[position + 8:position + 12], "big")
            attributes = int.from_bytes(data[position + 21:position + 23], "big")
            count += bool(attributes & 0x20)
            position += 12 + length
    return count


@pytest.mark.parametrize("reader", ["confluent-kafka", "kafka-python"])
def test_compaction_removes_aborted_records_and_the_markers_no_reader_needs(reader):
    """Twenty transactions, every other one aborted, each writing the same five keys of a
    compacted topic: once the cleaner has run, the aborted records and every marker whose
    records are gone have left the log, and readers of both isolation levels see each
    key's last committed value."""
    broker = Broker("group.initial.rebalance.delay.ms=0", "log.retention.check.interval.ms=200")
    try:
        admin = AdminClient({"bootstrap.servers": broker.address})
        topic = "balances"
        admin.create_topics([NewTopic(topic, 1, config={
            "cleanup.policy": "compact", "segment.bytes": "6000", "delete.retention.ms": "0",
            "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0",
        })])[topic].result(timeout=30)
        producer = Producer({"bootstrap.servers": broker.address, "transactional.id": "balances"})
        producer.init_transactions(30)
        for n in range(20):
            producer.begin_transaction()
            for k in range(5):
                producer.produce(topic, key=f"k{k}".encode(), value=f"t{n}-k{k}".encode(), partition=0)
            producer.flush(30)
            if n % 2 == 0:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        # Plain records roll the transactions out of the active segment, which is never cleaned.
        plain = Producer({"bootstrap.servers": broker.address})
        for i in range(12):
            plain.produce(topic, key=b"pad", value=f"pad-{i}".encode() + b"." * 200, partition=0)
        assert plain.flush(30) == 0
        deadline = time.time() + 30
        while markers_on_disk(broker, topic) > 1 and time.time() < deadline:
            time.sleep(0.2)
        # Only the last commit's marker is left: its records are the keys' latest values.
        assert markers_on_disk(broker, topic) == 1
        last_commit = [f"t18-k{k}" for k in range(5)]
        for isolation in ["read_committed", "read_uncommitted"]:
            if reader == "confluent-kafka":
                seen = consume_all(broker, topic, isolation, partitions=1)[0]
            else:
                seen = kafka_python_values(broker, topic, isolation)
            assert [v for v in seen if v.startswith("t")] == last_commit, isolation
            assert seen[-1].startswith("pad-11")
    finally:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def kafka_python_values(broker, topic, isolation):
    """Every value of partition 0 a kafka-python consumer with `isolation` reads."""
    from kafka import KafkaConsumer, TopicPartition as KTopicPartition
    consumer = KafkaConsumer(bootstrap_servers=broker.address, isolation_level=isolation,
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    partition = KTopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values = [message.value.decode() for message in consumer]
    consumer.close()
    return values
