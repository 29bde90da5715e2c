"""Client quotas with real clients: set and described with kafka-python's
AlterClientQuotas and DescribeClientQuotas requests, enforced on confluent-kafka
producers and consumers through throttle_time_ms and a muted connection."""
import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient
from kafka.protocol.admin.client_quotas import (AlterClientQuotasRequest,
                                                DescribeClientQuotasRequest)
from kafka.protocol.admin.topics import CreateTopicsRequest

Entry = AlterClientQuotasRequest.EntryData


def alter(admin, entity, ops, validate_only=False):
    """One entity's quota changes: (error code, message)."""
    request = AlterClientQuotasRequest(entries=[Entry(
        entity=[Entry.EntityData(entity_type=t, entity_name=n) for t, n in entity],
        ops=[Entry.OpData(key=k, value=float(v or 0), remove=v is None) for k, v in ops])],
        validate_only=validate_only)
    manager = admin._manager
    entry = manager.run(manager.send, request).entries[0]
    return entry.error_code, entry.error_message


def describe_response(admin, components, strict=False):
    Component = DescribeClientQuotasRequest.ComponentData
    request = DescribeClientQuotasRequest(
        components=[Component(entity_type=t, match_type=m, match=n) for t, m, n in components],
        strict=strict)
    manager = admin._manager
    response = manager.run(manager.send, request)
    assert response.error_code == 0, response
    return response


def describe(admin, components, strict=False):
    """{((type, name), …): {key: value}} for the entities the filter selects."""
    response = describe_response(admin, components, strict)
    return {tuple((e.entity_type, e.entity_name) for e in entry.entity):
            {v.key: v.value for v in entry.values} for entry in response.entries}


@pytest.fixture
def admin(broker):
    client = KafkaAdminClient(bootstrap_servers=broker.address)
    yield client
    client.close()


def create_topic(broker, name):
    client = AdminClient({"bootstrap.servers": broker.address})
    client.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)


def test_quotas_are_set_described_and_checked(broker, admin):
    assert alter(admin, [("user", "alice")], [("producer_byte_rate", 1048576)]) == (0, None)
    assert alter(admin, [("user", "alice"), ("client-id", "etl")],
                 [("consumer_byte_rate", 2097152)]) == (0, None)
    assert alter(admin, [("client-id", None)], [("producer_byte_rate", 4096)]) == (0, None)
    everything = describe(admin, [])
    assert everything == {
        (("user", "alice"),): {"producer_byte_rate": 1048576.0},
        (("client-id", "etl"), ("user", "alice")): {"consumer_byte_rate": 2097152.0},
        (("client-id", None),): {"producer_byte_rate": 4096.0},
    }
    # Exact name, strictly: only the user-alone entity; the default client ID by match type 1.
    assert list(describe(admin, [("user", 0, "alice")], strict=True)) == [(("user", "alice"),)]
    assert list(describe(admin, [("client-id", 1, None)])) == [(("client-id", None),)]
    # Kafka's refusals, entity by entity.
    invalid = 42
    assert alter(admin, [("user", "bob")], [("producer_byte_rate", 1.5)]) == (
        invalid, "producer_byte_rate cannot be a fractional value.")
    assert alter(admin, [("user", "bob")], [("request_percentage", 12.5)], True) == (0, None)
    assert alter(admin, [("user", "bob")], [("producer_byte_rate", -1)])[0] == invalid
    assert alter(admin, [("user", "bob")], [("buffer_size", 10)]) == (
        invalid, "Invalid configuration key buffer_size")
    assert alter(admin, [("group", "x")], [("producer_byte_rate", 10)])[0] == invalid
    assert alter(admin, [("user", "")], [("producer_byte_rate", 10)]) == (
        invalid, "Empty user not supported")
    # validate_only checks without storing; a removal takes the quota away.
    assert alter(admin, [("user", "bob")], [("producer_byte_rate", 10)], True) == (0, None)
    assert alter(admin, [("client-id", None)], [("producer_byte_rate", None)]) == (0, None)
    assert set(describe(admin, [])) == {(("user", "alice"),),
                                        (("client-id", "etl"), ("user", "alice"))}


def api_versions_throttles(address, client_id, count):
    """Sends `count` ApiVersions v1 requests on one connection, each once the previous
    one is answered: for each, (throttle_time_ms, seconds until the answer came)."""
    host, port = address.rsplit(":", 1)
    name = client_id.encode()
    request = struct.pack(">hhih", 18, 1, 0, len(name)) + name
    frame = struct.pack(">i", len(request)) + request
    answers = []
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = sock.makefile("rb")
        for _ in range(count):
            start = time.monotonic()
            sock.sendall(frame)
            (size,) = struct.unpack(">i", reader.read(4))
            body = reader.read(size)
            # correlation id, error code, api_keys[] (3 int16 each), throttle_time_ms
            (keys,) = struct.unpack(">i", body[6:10])
            (throttle,) = struct.unpack(">i", body[10 + 6 * keys:14 + 6 * keys])
            answers.append((throttle, time.monotonic() - start))
    return answers


def test_a_client_over_its_request_percentage_waits_at_most_a_window(broker, admin):
    """request_percentage counts the time the broker spends serving a client's requests
    (100 = one thread); over it, responses carry throttle_time_ms, capped at one quota
    window (1 s), and the connection is not read meanwhile."""
    # A quota so small that any request, however quick, is far over it: the throttle is
    # the cap, not a figure that depends on this machine's speed.
    assert alter(admin, [("client-id", "busy")], [("request_percentage", 1e-9)]) == (0, None)
    answers = api_versions_throttles(broker.address, "busy", 3)
    throttles = [t for t, _ in answers]
    assert throttles == [1000, 1000, 1000], answers
    # A request after a throttled answer waits until the mute ends.
    waits = [took for _, took in answers]
    assert waits[0] < 0.5 and min(waits[1:]) >= 0.9, answers
    # Other clients are not held back.
    assert [t for t, _ in api_versions_throttles(broker.address, "idle", 2)] == [0, 0]
    assert describe_response(admin, []).throttle_time_ms == 0


def test_topic_mutations_over_the_controller_mutation_rate_are_refused(broker, admin):
    """controller_mutation_rate, partitions per second, is a bucket of 11 windows' worth:
    with 1/s, a CreateTopics v7 request (kafka-python's) creating 10, 5 and 1 partitions
    gets the first two (the second into debt) and THROTTLING_QUOTA_EXCEEDED for the third,
    with the time the debt takes to pay in throttle_time_ms."""
    assert alter(admin, [("client-id", "creator")], [("controller_mutation_rate", 1)]) == (0, None)
    creator = KafkaAdminClient(bootstrap_servers=broker.address, client_id="creator")
    topic = CreateTopicsRequest.CreatableTopic
    request = CreateTopicsRequest(
        topics=[topic(name=n, num_partitions=p, replication_factor=1, assignments=[],
                      configs=[]) for n, p in [("m1", 10), ("m2", 5), ("m3", 1)]],
        timeout_ms=30000, validate_only=False)
    try:
        manager = creator._manager
        response = manager.run(manager.send, request)
    finally:
        creator.close()
    codes = {t.name: t.error_code for t in response.topics}
    assert codes == {"m1": 0, "m2": 0, "m3": 89}, response
    assert 3000 <= response.throttle_time_ms <= 4000, response
    listed = AdminClient({"bootstrap.servers": broker.address}).list_topics(timeout=10).topics
    assert "m2" in listed and "m3" not in listed


QUOTA = 512 * 1024


def test_a_producer_over_its_byte_rate_is_held_to_it(broker, admin):
    create_topic(broker, "metered")
    assert alter(admin, [("client-id", "metered-producer")],
                 [("producer_byte_rate", QUOTA)]) == (0, None)
    throttles = []
    producer = Producer({"bootstrap.servers": broker.address, "client.id": "metered-producer",
                         "batch.size": 4096, "linger.ms": 2,
                         "max.in.flight.requests.per.connection": 1,
                         "throttle_cb": lambda event: throttles.append(event.throttle_time)})
    value = b"q" * 1024
    delivered = []
    start = time.monotonic()
    record = lambda err, msg: delivered.append(time.monotonic() - start) if not err else None
    # Flat out for 10 s: keep librdkafka's queue full.
    while time.monotonic() - start < 10:
        try:
            producer.produce("metered", value=value, on_delivery=record)
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
    rate = sum(1024 for t in delivered if t <= 10) / 10
    producer.purge()
    producer.flush(10)
    assert throttles and max(throttles) > 0, "the broker never reported a throttle time"
    print(f"produced {rate:.0f} B/s against a quota of {QUOTA}")
    assert abs(rate - QUOTA) <= 0.1 * QUOTA, f"{rate:.0f} B/s against a quota of {QUOTA}"


def test_a_consumer_over_its_byte_rate_is_throttled(broker, admin):
    create_topic(broker, "backlog")
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 20,
                         "batch.size": 16384})
    for _ in range(6144):
        producer.produce("backlog", value=b"b" * 1024)
        producer.poll(0)
    assert producer.flush(30) == 0
    quota = 128 * 1024
    assert alter(admin, [("client-id", "metered-consumer")],
                 [("consumer_byte_rate", quota)]) == (0, None)
    throttles = []
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "metered",
                         "client.id": "metered-consumer", "fetch.max.bytes": 65536,
                         "max.partition.fetch.bytes": 65536, "message.max.bytes": 65536,
                         "throttle_cb": lambda event: throttles.append(event.throttle_time)})
    consumer.assign([TopicPartition("backlog", 0, 0)])
    read = 0
    start = time.monotonic()
    while time.monotonic() - start < 6:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            read += len(msg.value())
    consumer.close()
    # Unthrottled it reads the 6 MiB backlog in well under a second; held to the quota
    # it gets about ten seconds' worth at once (the window Kafka measures over, as a
    # client's first allowance), then little more in these six seconds.
    assert throttles and max(throttles) > 0
    print(f"consumed {read} bytes in 6 s against a quota of {quota} B/s")
    assert 9 * quota < read < 15 * quota, read


def answered_within(address, seconds):
    """Opens a connection and sends ApiVersions v0: (whether it was answered, seconds
    until the answer or the close)."""
    host, port = address.rsplit(":", 1)
    request = struct.pack(">hhih", 18, 0, 7, 4) + b"conn"
    start = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=seconds) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            answer = sock.recv(8)
            return len(answer) == 8 and answer[4:8] == struct.pack(">i", 7), \
                time.monotonic() - start
    except (ConnectionError, socket.timeout):
        return False, time.monotonic() - start


def test_an_address_over_its_connection_creation_rate_has_connections_held_then_closed(
        broker, admin):
    """connection_creation_rate is a quota of the ip entity (KIP-612): connections from
    an address over it are held for the throttle time and closed unanswered; the others
    are served."""
    invalid = 42
    assert alter(admin, [("ip", "not-an-address")], [("connection_creation_rate", 5)]) == (
        invalid, "not-an-address is not a valid IP or resolvable host.")
    assert alter(admin, [("ip", "127.0.0.1"), ("user", "alice")],
                 [("connection_creation_rate", 5)])[0] == invalid
    assert alter(admin, [("ip", None)], [("producer_byte_rate", 5)]) == (
        invalid, "Invalid configuration key producer_byte_rate")
    assert alter(admin, [("user", "alice")], [("connection_creation_rate", 5)]) == (
        invalid, "Invalid configuration key connection_creation_rate")
    assert alter(admin, [("ip", "127.0.0.1")], [("connection_creation_rate", 2.5)]) == (
        invalid, "connection_creation_rate cannot be a fractional value.")

    assert alter(admin, [("ip", "127.0.0.1")], [("connection_creation_rate", 2)]) == (0, None)
    try:
        assert describe(admin, [("ip", 0, "127.0.0.1")]) == {
            (("ip", "127.0.0.1"),): {"connection_creation_rate": 2.0}}
        # 2 per second measured over ten seconds at first: about twenty connections at
        # once are served, then each is held (500 ms or more) and closed unanswered.
        outcomes = [answered_within(broker.address, 5) for _ in range(26)]
        served = [took for ok, took in outcomes if ok]
        refused = [took for ok, took in outcomes if not ok]
        assert 18 <= len(served) <= 23, outcomes
        assert outcomes[:18] == [(True, took) for _, took in outcomes[:18]], outcomes
        assert len(refused) >= 3 and min(refused) >= 0.4 and max(refused) < 2.5, outcomes
    finally:
        assert alter(admin, [("ip", "127.0.0.1")], [("connection_creation_rate", None)]) \
            == (0, None)
    assert answered_within(broker.address, 5)[0]
