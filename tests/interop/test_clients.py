"""Real Kafka clients against the real spool binary: kcat (librdkafka 2.0.2 on Debian 12),
confluent-kafka (librdkafka 2.x), kafka-python and aiokafka. Each test checks what came
back — offsets, keys, values, headers, order — not just that nothing raised."""
import asyncio
import re
import subprocess
import time

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def kcat(broker, *args, input=None):
    result = subprocess.run(["kcat", "-b", broker.address, *args], input=input, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kcat_lists_metadata_produces_with_headers_and_consumes_in_order(broker):
    lines = "".join(f"key-{i % 10}:value-{i}\n" for i in range(300))
    kcat(broker, "-P", "-t", "kcat-topic", "-K:", "-H", "source=kcat", "-z", "snappy", input=lines)
    listing = kcat(broker, "-L")
    assert 'topic "kcat-topic" with 3 partitions' in listing
    out = kcat(broker, "-C", "-t", "kcat-topic", "-o", "beginning", "-e", "-f", "%p\t%o\t%k\t%s\t%h\n")
    rows = [line.split("\t") for line in out.splitlines() if line]
    assert len(rows) == 300
    assert all(row[4] == "source=kcat" for row in rows)
    # Within each partition, offsets run 0, 1, 2, … and values keep the order produced.
    for partition in {row[0] for row in rows}:
        mine = [row for row in rows if row[0] == partition]
        assert [int(row[1]) for row in mine] == list(range(len(mine)))
        sequence = [int(row[3].split("-")[1]) for row in mine]
        assert sequence == sorted(sequence)
        # The same key always lands in the same partition.
        assert all(f"key-{n % 10}" == row[2] for n, row in zip(sequence, mine))


def test_confluent_kafka_acks_all_every_codec_read_back_by_assign_and_seek(broker):
    from confluent_kafka import Consumer, Producer, TopicPartition

    count = 100_000
    for codec in CODECS:
        producer = Producer({"bootstrap.servers": broker.address, "acks": "all", "compression.type": codec,
                             "linger.ms": 5, "queue.buffering.max.messages": count})
        failures, offsets = [], []

        def delivered(err, msg):
            if err is None:
                offsets.append(msg.offset())
            else:
                failures.append(err)

        for i in range(count):
            producer.produce(f"ck-{codec}", key=f"k{i}", value=f"{codec}-{i}-" * 4, partition=0, on_delivery=delivered)
            if i % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(120) == 0
        assert failures == [], failures[:3]
        assert sorted(offsets) == list(range(count)), codec
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "not-used", "enable.auto.commit": False})
    for codec in CODECS:
        # Start in the middle, read a little, then seek back to the start and read everything.
        partition = TopicPartition(f"ck-{codec}", 0, count // 2)
        consumer.assign([partition])
        first = None
        deadline = time.time() + 30
        while first is None and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                first = message
        assert (first.offset(), first.key()) == (count // 2, f"k{count // 2}".encode()), codec
        consumer.seek(TopicPartition(f"ck-{codec}", 0, 0))
        seen = []
        deadline = time.time() + 120
        while len(seen) < count and time.time() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is None:
                    seen.append((message.offset(), message.key(), message.value()))
        assert len(seen) == count, (codec, len(seen))
        for offset, key, value in seen:
            assert (key, value) == (f"k{offset}".encode(), (f"{codec}-{offset}-" * 4).encode()), (codec, offset)
        assert [offset for offset, _, _ in seen] == list(range(count)), codec
    consumer.close()


def test_confluent_kafka_finds_offsets_by_time(broker):
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": broker.address})
    base = 1_700_000_000_000
    for i in range(100):
        producer.produce("timed", value=f"{i}", partition=0, timestamp=base + i * 1000)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "not-used"})
    found = consumer.offsets_for_times([TopicPartition("timed", 0, base + 41_500)], timeout=10)
    assert found[0].offset == 42
    low, high = consumer.get_watermark_offsets(TopicPartition("timed", 0), timeout=10)
    assert (low, high) == (0, 100)
    consumer.close()


def test_kafka_python_produces_and_consumes(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    # kafka-python 3 turns idempotence on by default: InitProducerId and sequence numbers.
    producer = KafkaProducer(bootstrap_servers=broker.address, acks="all", compression_type="gzip")
    futures = [producer.send("kp-topic", key=b"k%d" % i, value=b"v%d" % i, partition=1) for i in range(500)]
    producer.flush(30)
    assert [f.get(timeout=30).offset for f in futures] == list(range(500))
    # The batches went out with a producer ID from the broker.
    assert producer._transaction_manager.producer_id_and_epoch.producer_id >= 0
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.address, group_id=None, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition("kp-topic", 1)])
    consumer.seek_to_beginning()
    values = [m.value for m in consumer]
    assert values == [b"v%d" % i for i in range(500)]
    consumer.close()


def test_kafka_python_consumer_uses_incremental_fetch_sessions(broker, caplog):
    import logging

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    caplog.set_level(logging.DEBUG, logger="kafka.consumer.fetcher")
    producer = KafkaProducer(bootstrap_servers=broker.address, acks=1, enable_idempotence=False)
    consumer = KafkaConsumer(bootstrap_servers=broker.address, group_id=None, fetch_max_wait_ms=100)
    partitions = [TopicPartition("kp-sessions", p) for p in range(3)]
    producer.send("kp-sessions", value=b"first", partition=0).get(timeout=30)
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    seen = {p: [] for p in range(3)}
    # Rounds of records on one partition at a time: the others stay quiet, so incremental
    # responses leave them out, and the consumer must still get every record once, in order.
    expected = {p: [] for p in range(3)}
    expected[0].append(b"first")
    deadline = time.time() + 60
    for round in range(12):
        partition = round % 3
        values = [b"r%d-%d" % (round, i) for i in range(20)]
        for v in values:
            producer.send("kp-sessions", value=v, partition=partition)
        producer.flush(30)
        expected[partition] += values
        while sum(map(len, seen.values())) < sum(map(len, expected.values())) and time.time() < deadline:
            for tp, messages in consumer.poll(timeout_ms=200).items():
                seen[tp.partition] += [m.value for m in messages]
    assert seen == expected
    producer.close()
    consumer.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("created a new incremental fetch session" in m for m in messages), messages[-20:]
    incremental = [m for m in messages if "sent an incremental fetch response for session" in m]
    assert len(incremental) >= 10, messages[-20:]
    # Quiet partitions were left out of incremental responses, as KIP-227 intends.
    answered = [int(re.search(r"with (\d+) response partitions", m).group(1)) for m in incremental]
    assert min(answered) < 3, incremental[-5:]
    assert not [m for m in messages if "unable to process the fetch request" in m or "invalid" in m]


def test_idempotent_producers_of_every_client_write_each_record_once(broker):
    from aiokafka import AIOKafkaProducer
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": broker.address, "enable.idempotence": True,
                         "linger.ms": 5, "compression.type": "lz4"})
    delivered = []
    for i in range(2000):
        producer.produce("idem", key=b"k%d" % (i % 7), value=b"ck-%d" % i, partition=0,
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert [err for err, _ in delivered if err is not None] == []
    assert sorted(offset for _, offset in delivered) == list(range(2000))

    async def aiokafka_idempotent():
        p = AIOKafkaProducer(bootstrap_servers=broker.address, enable_idempotence=True)
        await p.start()
        try:
            sent = [await p.send_and_wait("idem", b"ak-%d" % i, partition=0) for i in range(200)]
            assert p._txn_manager.producer_id >= 0
            return [m.offset for m in sent]
        finally:
            await p.stop()

    assert asyncio.run(aiokafka_idempotent()) == list(range(2000, 2200))

    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition("idem", 0, 0)])
    values = []
    while len(values) < 2200:
        message = consumer.poll(10)
        assert message is not None and message.error() is None, message and message.error()
        values.append(message.value())
    consumer.close()
    assert values == [b"ck-%d" % i for i in range(2000)] + [b"ak-%d" % i for i in range(200)]


def test_aiokafka_produces_and_consumes(broker):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.address, acks="all")
        await producer.start()
        try:
            offsets = [(await producer.send_and_wait("aio-topic", b"m%d" % i, partition=2)).offset for i in range(200)]
        finally:
            await producer.stop()
        assert offsets == list(range(200))
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.address, group_id=None)
        await consumer.start()
        try:
            partition = TopicPartition("aio-topic", 2)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            got = []
            deadline = time.time() + 30
            while len(got) < 200 and time.time() < deadline:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                got += [m.value for m in batch.get(partition, [])]
        finally:
            await consumer.stop()
        assert got == [b"m%d" % i for i in range(200)]

    asyncio.run(scenario())


def test_confluent_admin_creates_grows_trims_and_deletes_topics(broker):
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.address})
    futures = admin.create_topics([
        NewTopic("admin-a", num_partitions=4, replication_factor=1, config={"retention.ms": "3600000", "cleanup.policy": "delete"}),
        NewTopic("admin-b", num_partitions=1, replication_factor=1),
    ])
    for future in futures.values():
        future.result(30)
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics["admin-a"].partitions) == 4

    # Refusals carry Kafka's error codes (compared by number: clients name them differently).
    TOPIC_ALREADY_EXISTS, INVALID_TOPIC_EXCEPTION, INVALID_PARTITIONS = 36, 17, 37
    INVALID_REPLICATION_FACTOR, INVALID_CONFIG, UNKNOWN_TOPIC_OR_PARTITION = 38, 40, 3

    def error_of(future):
        try:
            future.result(30)
        except KafkaException as e:
            return e.args[0].code()
        return None
    assert error_of(admin.create_topics([NewTopic("admin-a", 1, 1)])["admin-a"]) == TOPIC_ALREADY_EXISTS
    assert error_of(admin.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"]) == INVALID_TOPIC_EXCEPTION
    assert error_of(admin.create_topics([NewTopic("admin-c", 1, 3)])["admin-c"]) == INVALID_REPLICATION_FACTOR
    assert error_of(admin.create_topics([NewTopic("admin-d", 1, 1, config={"no.such.config": "1"})])["admin-d"]) == INVALID_CONFIG
    assert error_of(admin.create_topics([NewTopic("admin-e", 2, 1)], validate_only=True)["admin-e"]) is None
    assert "admin-e" not in admin.list_topics(timeout=10).topics, "validate_only creates nothing"

    admin.create_partitions([NewPartitions("admin-b", 3)])["admin-b"].result(30)
    assert len(admin.list_topics(timeout=10).topics["admin-b"].partitions) == 3
    assert error_of(admin.create_partitions([NewPartitions("admin-b", 2)])["admin-b"]) == INVALID_PARTITIONS

    producer = Producer({"bootstrap.servers": broker.address})
    for i in range(100):
        producer.produce("admin-b", value=b"%d" % i, partition=2)
    assert producer.flush(30) == 0
    deleted = admin.delete_records([TopicPartition("admin-b", 2, 40)])
    [result] = [f.result(30) for f in deleted.values()]
    assert result.low_watermark == 40
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "not-used"})
    assert consumer.get_watermark_offsets(TopicPartition("admin-b", 2), timeout=10) == (40, 100)
    consumer.close()

    for future in admin.delete_topics(["admin-a"]).values():
        future.result(30)
    assert "admin-a" not in admin.list_topics(timeout=10).topics
    assert error_of(admin.delete_topics(["admin-a"])["admin-a"]) == UNKNOWN_TOPIC_OR_PARTITION


def test_confluent_admin_describes_and_alters_configs(broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                       ConfigSource, NewTopic, ResourceType)

    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("cfg", 1, 1, config={"retention.ms": "1000"})])["cfg"].result(30)

    topic = ConfigResource(ResourceType.TOPIC, "cfg")
    configs = admin.describe_configs([topic])[topic].result(30)
    assert configs["retention.ms"].value == "1000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].value == "1073741824"
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    # The broker's num.partitions was set on the command line: a static broker config.
    brokers = ConfigResource(ResourceType.BROKER, "0")
    broker_configs = admin.describe_configs([brokers])[brokers].result(30)
    assert broker_configs["num.partitions"].value == "3"
    assert broker_configs["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value

    alter = ConfigResource(ResourceType.TOPIC, "cfg", incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    admin.incremental_alter_configs([alter])[alter].result(30)
    configs = admin.describe_configs([topic])[topic].result(30)
    assert configs["retention.ms"].value == "604800000"
    assert configs["max.message.bytes"].value == "2000000"
    assert sorted(configs["cleanup.policy"].value.split(",")) == ["compact", "delete"]

    bad = ConfigResource(ResourceType.TOPIC, "cfg", incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([bad])[bad].result(30)
        raise AssertionError("an invalid value was accepted")
    except KafkaException as e:
        assert e.args[0].code() == 40  # INVALID_CONFIG
    missing = ConfigResource(ResourceType.TOPIC, "no-such-topic")
    try:
        admin.describe_configs([missing])[missing].result(30)
        raise AssertionError("an unknown topic was described")
    except KafkaException as e:
        assert e.args[0].code() == 3  # UNKNOWN_TOPIC_OR_PARTITION

    # Dynamic broker settings (here this broker's own, resource "0"; the cluster-wide default
    # has an empty name, which neither librdkafka nor kafka-python sends) rank above the
    # static value and below a topic's own.
    per_broker = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("log.retention.ms", "86400000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("message.max.bytes", "5000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([per_broker])[per_broker].result(30)
    configs = admin.describe_configs([topic])[topic].result(30)
    assert configs["retention.ms"].value == "86400000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert configs["max.message.bytes"].value == "2000000", "the topic's own value wins"
    broker_configs = admin.describe_configs([brokers])[brokers].result(30)
    assert broker_configs["log.retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert broker_configs["message.max.bytes"].value == "5000"
    assert broker_configs["message.max.bytes"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert not broker_configs["message.max.bytes"].is_read_only
    assert broker_configs["num.partitions"].is_read_only

    # The lowered message.max.bytes governs a topic without its own value.
    admin.create_topics([NewTopic("cfg-small", 1, 1)])["cfg-small"].result(30)
    from confluent_kafka import Producer
    delivered = []
    producer = Producer({"bootstrap.servers": broker.address, "message.max.bytes": 1000000,
                         "compression.type": "none", "retries": 0})
    for size in (10000, 100):  # one batch each: the limit applies to a whole batch
        producer.produce("cfg-small", value=b"x" * size, on_delivery=lambda err, _: delivered.append(err))
        producer.flush(30)
    assert [e.code() if e else None for e in delivered] == [10, None]  # MESSAGE_TOO_LARGE

    # Settings read at start-up cannot change at run time: INVALID_REQUEST, as Kafka.
    static = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("num.partitions", "7", incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([static])[static].result(30)
        raise AssertionError("a static broker setting was changed")
    except KafkaException as e:
        assert e.args[0].code() == 42  # INVALID_REQUEST

    # Config changes are metadata records: they survive a restart.
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.address})
    configs = admin.describe_configs([topic])[topic].result(30)
    assert configs["max.message.bytes"].value == "2000000"
    assert configs["max.message.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "86400000"
    broker_configs = admin.describe_configs([brokers])[brokers].result(30)
    assert broker_configs["message.max.bytes"].value == "5000"


def test_confluent_admin_describes_the_cluster_and_topics(broker):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("described", 5, 1)])["described"].result(30)
    cluster = admin.describe_cluster().result(30)
    assert cluster.cluster_id == "spool-cluster"
    assert [node.id for node in cluster.nodes] == [0]
    assert cluster.controller.id == 0
    [description] = [f.result(30) for f in admin.describe_topics(TopicCollection(["described"])).values()]
    assert description.name == "described"
    assert [p.id for p in description.partitions] == [0, 1, 2, 3, 4]
    assert all(p.leader.id == 0 and [r.id for r in p.isr] == [0] for p in description.partitions)


def test_each_listener_advertises_its_own_endpoint(two_listener_broker):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    listeners = two_listener_broker.listeners
    assert set(listeners) == {"PLAINTEXT", "INTERNAL"}
    assert listeners["PLAINTEXT"] != listeners["INTERNAL"]
    seen = {}
    for name, address in listeners.items():
        admin = AdminClient({"bootstrap.servers": address})
        [node] = admin.describe_cluster().result(30).nodes
        seen[name] = (node.host, node.port)
        [(_, metadata_broker)] = admin.list_topics(timeout=10).brokers.items()
        assert (metadata_broker.host, metadata_broker.port) == seen[name]
    port = lambda name: int(listeners[name].rsplit(":", 1)[1])
    assert seen == {"PLAINTEXT": ("127.0.0.1", port("PLAINTEXT")),
                    "INTERNAL": ("localhost", port("INTERNAL"))}

    # Written through one listener, read back through the other.
    producer = Producer({"bootstrap.servers": listeners["INTERNAL"]})
    for i in range(10):
        producer.produce("across", value=b"m%d" % i, partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": listeners["PLAINTEXT"], "group.id": "not-used",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("across", 0, 0)])
    values = []
    deadline = time.time() + 30
    while len(values) < 10 and time.time() < deadline:
        message = consumer.poll(1)
        if message is not None and message.error() is None:
            values.append(message.value())
    consumer.close()
    assert values == [b"m%d" % i for i in range(10)]


def test_kafka_python_admin_creates_and_refuses_topics(broker):
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=broker.address)
    try:
        admin.create_topics([NewTopic("kp-admin", num_partitions=5, replication_factor=1,
                                      topic_configs={"retention.ms": "7200000"})], timeout_ms=10000)
        try:
            admin.create_topics([NewTopic("kp-admin", num_partitions=1, replication_factor=1)], timeout_ms=10000)
            raise AssertionError("creating an existing topic must fail")
        except TopicAlreadyExistsError:
            pass
        assert "kp-admin" in admin.list_topics()
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.address, group_id=None)
    assert consumer.partitions_for_topic("kp-admin") == set(range(5))
    consumer.close()


def test_aiokafka_admin_creates_and_refuses_topics(broker):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    TOPIC_ALREADY_EXISTS = 36

    async def scenario():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic("aio-admin", num_partitions=3, replication_factor=1)])
            first = [(name, code) for name, code, *_ in response.topic_errors]
            response = await admin.create_topics([NewTopic("aio-admin", num_partitions=1, replication_factor=1)])
            second = [(name, code) for name, code, *_ in response.topic_errors]
            described = await admin.describe_topics(["aio-admin"])
        finally:
            await admin.close()
        return first, second, described

    first, second, described = asyncio.run(scenario())
    assert first == [("aio-admin", 0)]
    assert second == [("aio-admin", TOPIC_ALREADY_EXISTS)]
    assert len(described[0]["partitions"]) == 3
