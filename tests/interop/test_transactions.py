"""Transactions with real clients: commits and aborts seen by read_committed and
read_uncommitted consumers, consume-transform-produce with offsets in the transaction,
zombie fencing, and transactions a timeout aborts."""
import asyncio
import shutil
import time

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker


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
