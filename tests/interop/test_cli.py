"""The `spool` CLI against the real broker, cross-checked with real clients: topics made
and changed by the CLI as kafka-python's admin client sees them, records produced by the
CLI as confluent-kafka and kcat read them (keys in the partitions librdkafka's
Java-compatible murmur2 partitioner picks), and records produced by confluent-kafka as
`spool consume` prints them (templates, JSON, offsets and times)."""
import json
import os
import random
import shutil
import subprocess
import threading
import time

import confluent_kafka
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType
from kafka.admin import KafkaAdminClient

from conftest import SPOOL, Broker, free_port
from fault_proxy import FaultProxy


def spool(broker, *args, input=None, check=True):
    env = dict(os.environ, SPOOL_BROKERS=broker.address)
    result = subprocess.run([SPOOL, *args], input=input, capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def spool_json(broker, *args, input=None):
    return json.loads(spool(broker, *args, "--json", input=input).stdout)


def test_topic_commands_create_list_describe_alter_grow_and_delete(broker):
    out = spool(broker, "topic", "create", "orders", "payments", "-p", "4", "-c", "retention.ms=3600000").stdout
    assert out == "created topic orders\ncreated topic payments\n"
    again = spool(broker, "topic", "create", "orders", check=False)
    assert again.returncode == 1
    assert "topic orders: TOPIC_ALREADY_EXISTS" in again.stderr

    listed = spool_json(broker, "topic", "list")
    assert {(t["name"], t["partitions"], t["replication_factor"]) for t in listed} == {("orders", 4, 1), ("payments", 4, 1)}
    table = spool(broker, "topic", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "PARTITIONS", "REPLICAS"]
    assert table[1].split() == ["orders", "4", "1"]

    admin = KafkaAdminClient(bootstrap_servers=broker.address)
    try:
        assert set(admin.list_topics()) >= {"orders", "payments"}
        spool(broker, "topic", "alter-config", "orders", "--set", "cleanup.policy=compact", "--delete", "retention.ms")
        resource = ConfigResource(ResourceType.TOPIC, "orders")
        described = AdminClient({"bootstrap.servers": broker.address})
        configs = described.describe_configs([resource])[resource].result(30)
        assert configs["cleanup.policy"].value == "compact"
        assert configs["retention.ms"].value == "604800000"
        assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
        bad = spool(broker, "topic", "alter-config", "orders", "--set", "retention.ms=soon", check=False)
        assert bad.returncode == 1 and "INVALID_CONFIG" in bad.stderr, bad.stderr

        assert spool(broker, "topic", "add-partitions", "orders", "-n", "2").stdout == "topic orders now has 6 partitions\n"
        described = spool_json(broker, "topic", "describe", "orders")
        assert [p["partition"] for p in described["partitions"]] == list(range(6))
        assert described["configs"] == {"cleanup.policy": "compact"}
        assert all(p["leader"] == 0 and p["isr"] == [0] for p in described["partitions"])
        text = spool(broker, "topic", "describe", "orders").stdout
        assert "PARTITIONS  6" in text and "cleanup.policy  compact" in text

        spool(broker, "topic", "delete", "payments")
        deadline = time.time() + 10
        while "payments" in admin.list_topics() and time.time() < deadline:
            time.sleep(0.1)
        assert "payments" not in admin.list_topics()
        gone = spool(broker, "topic", "describe", "payments", check=False)
        assert gone.returncode == 1 and "topic payments: UNKNOWN_TOPIC_OR_PARTITION" in gone.stderr
    finally:
        admin.close()


def test_cli_producer_puts_keys_where_librdkafka_murmur2_puts_them(broker):
    spool(broker, "topic", "create", "keyed", "-p", "6")
    keys = [f"customer-{i}" for i in range(40)]
    lines = "".join(f"{k}\tfrom-cli-{i}\n" for i, k in enumerate(keys))
    report = spool_json(broker, "produce", "keyed", "-f", "kv", "-H", "source=cli", "-z", "lz4", input=lines)
    assert report["records"] == 40
    assert sum(p["records"] for p in report["partitions"].values()) == 40

    # The same keys through librdkafka's Java-compatible partitioner.
    spool(broker, "topic", "create", "keyed-reference", "-p", "6")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.address, "partitioner": "murmur2_random"})
    expected = {}

    def delivered(err, msg):
        assert err is None, err
        expected[msg.key().decode()] = msg.partition()

    for k in keys:
        producer.produce("keyed-reference", key=k, value=b"x", on_delivery=delivered)
    assert producer.flush(30) == 0

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.address, "group.id": "cli-check", "auto.offset.reset": "earliest",
    })
    try:
        consumer.subscribe(["keyed"])
        got = {}
        deadline = time.time() + 30
        while len(got) < 40 and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got[msg.key().decode()] = (msg.partition(), msg.value().decode(), msg.headers())
        assert len(got) == 40
        for i, k in enumerate(keys):
            partition, value, headers = got[k]
            assert partition == expected[k], k
            assert value == f"from-cli-{i}"
            assert headers == [("source", b"cli")]
        assert len({p for p, _, _ in got.values()}) > 1
    finally:
        consumer.close()

    # kcat reads what the CLI wrote to one partition, in order.
    spool(broker, "produce", "keyed", "-p", "5", "--acks", "1", input="p5-a\np5-b\n")
    end = spool_json(broker, "topic", "describe", "keyed")["partitions"][5]["high_watermark"]
    kcat = subprocess.run(
        ["kcat", "-b", broker.address, "-C", "-t", "keyed", "-p", "5", "-o", str(end - 2), "-e", "-f", "%o %s\n"],
        capture_output=True, text=True, timeout=60,
    )
    assert kcat.stdout.splitlines() == [f"{end - 2} p5-a", f"{end - 1} p5-b"], kcat.stderr


def test_cli_producer_through_dropped_connections_writes_each_line_once(tmp_path):
    """`spool produce` (idempotent, as --acks all is its default) through a proxy that
    cuts its connections again and again, each time first swallowing the broker's answers
    for 50 ms, so that the producer sends again batches the broker already wrote: every
    line is in the log once, each key's lines in the order they were read."""
    proxy_port = free_port()
    broker = Broker(f"listeners=PLAINTEXT://127.0.0.1:{free_port()}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port}")
    host, port = broker.address.rsplit(":", 1)
    proxy = FaultProxy(host, int(port), proxy_port)
    via_proxy = Broker.__new__(Broker)
    via_proxy.address = f"127.0.0.1:{proxy_port}"
    keys, total = 4, 30_000
    try:
        spool(via_proxy, "topic", "create", "once", "-p", "3")
        producer = subprocess.Popen(
            [SPOOL, "produce", "once", "-f", "kv", "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, SPOOL_BROKERS=via_proxy.address),
        )
        rng = random.Random(int(os.environ.get("SPOOL_TEST_SEED", time.time())))

        def feed():
            # A few seconds of input, so that the cuts land while batches are in flight.
            for chunk in range(100):
                producer.stdin.write("".join(f"k{i % keys}\t{i}\n" for i in range(chunk * 300, chunk * 300 + 300)))
                producer.stdin.flush()
                time.sleep(0.03)
            producer.stdin.close()

        def cut():
            while producer.poll() is None and proxy.cuts < 25:
                time.sleep(rng.uniform(0.1, 0.25))
                proxy.cut(swallow_ms=50)

        threads = [threading.Thread(target=feed), threading.Thread(target=cut)]
        for thread in threads:
            thread.start()
        output = producer.stdout.read()
        assert producer.wait(timeout=180) == 0, producer.stderr.read()
        report = json.loads(output)
        for thread in threads:
            thread.join()
        assert report["records"] == total
        assert proxy.cuts >= 10, f"only {proxy.cuts} cuts while producing"

        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": via_proxy.address, "group.id": "once-check", "enable.auto.commit": False,
        })
        consumer.assign([confluent_kafka.TopicPartition("once", p, 0) for p in range(3)])
        seen = {f"k{k}": [] for k in range(keys)}
        deadline = time.time() + 60
        while sum(map(len, seen.values())) < total and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert not message.error(), message.error()
            seen[message.key().decode()].append(int(message.value()))
        # Nothing more after the last expected record: no duplicate at the end either.
        extra = consumer.poll(2)
        consumer.close()
        assert extra is None, (extra.key(), extra.value())
        for k in range(keys):
            assert seen[f"k{k}"] == list(range(k, total, keys)), f"key k{k} differs"
    finally:
        proxy.close()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def test_cli_consumer_prints_what_confluent_kafka_produced(broker):
    spool(broker, "topic", "create", "events", "-p", "2")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.address})
    base = 1_700_000_000_000
    for i in range(10):
        producer.produce(
            "events", partition=i % 2, key=f"k{i}", value=f"v{i}",
            headers=[("n", str(i).encode())], timestamp=base + i * 1000,
        )
    assert producer.flush(30) == 0

    out = spool(broker, "consume", "events", "-p", "1", "--format", "%p/%o %k=%v %T [%h]\\n").stdout
    assert out.splitlines() == [f"1/{j} k{2 * j + 1}=v{2 * j + 1} {base + (2 * j + 1) * 1000} [n={2 * j + 1}]" for j in range(5)]

    records = [json.loads(line) for line in spool(broker, "consume", "events", "--json").stdout.splitlines()]
    assert sorted(r["value"] for r in records) == sorted(f"v{i}" for i in range(10))
    assert all(r["headers"] == {"n": r["value"][1:]} for r in records)

    # From an offset, from a time, a count, and from the end (nothing yet).
    assert spool(broker, "consume", "events", "-p", "0", "-o", "3").stdout.split() == ["v6", "v8"]
    since = spool(broker, "consume", "events", "-p", "0", "-o", f"@{base + 5000}").stdout.split()
    assert since == ["v6", "v8"]
    assert len(spool(broker, "consume", "events", "-n", "3").stdout.split()) == 3
    assert spool(broker, "consume", "events", "-o", "end").stdout == ""

    # --follow waits for records produced after it started. However long it takes to
    # start, one of the records produced every half second comes after it has looked up
    # the end, and it prints that one and stops.
    follower = subprocess.Popen(
        [SPOOL, "consume", "events", "-p", "0", "-o", "end", "-F", "-n", "1"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, SPOOL_BROKERS=broker.address),
    )
    try:
        deadline = time.time() + 30
        while follower.poll() is None and time.time() < deadline:
            producer.produce("events", partition=0, value="late")
            assert producer.flush(30) == 0
            time.sleep(0.5)
        out, _ = follower.communicate(timeout=30)
        assert out == "late\n"
    finally:
        follower.kill()
        follower.wait()

    bad = spool(broker, "consume", "events", "-p", "7", check=False)
    assert bad.returncode == 1 and "topic events has no partition 7" in bad.stderr


def test_group_commands_show_lag_reset_offsets_and_delete(broker):
    """The issue's operator story: produce, a group consumes part, describe shows its lag,
    reset moves its offsets (a dry run first), the group reads again from there, delete."""
    spool(broker, "topic", "create", "clicks", "-p", "3")
    lines = "".join(f"user-{i % 7}\tclick-{i}\n" for i in range(60))
    spool(broker, "produce", "clicks", "-f", "kv", input=lines)
    ends = {p["partition"]: p["high_watermark"] for p in spool_json(broker, "topic", "describe", "clicks")["partitions"]}
    assert sum(ends.values()) == 60

    def member(group):
        return confluent_kafka.Consumer({
            "bootstrap.servers": broker.address, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "client.id": "lag-reader",
        })

    # The group reads 25 records and commits them, then stays in the group.
    consumer = member("analytics")
    consumer.subscribe(["clicks"])
    read = 0
    deadline = time.time() + 30
    while read < 25 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            read += 1
            consumer.commit(message=msg, asynchronous=False)
    assert read == 25
    committed = {tp.partition: tp.offset for tp in consumer.committed([confluent_kafka.TopicPartition("clicks", p) for p in range(3)], 10)}
    expected_lag = sum(ends[p] - max(committed[p], 0) for p in range(3))
    assert expected_lag == 35

    listed = spool_json(broker, "group", "list")
    assert {"group": "analytics", "state": "Stable", "type": "classic", "protocol_type": "consumer"} in listed
    described = spool_json(broker, "group", "describe", "analytics")
    assert described["state"] == "Stable" and described["total_lag"] == expected_lag
    assert [m["client_id"] for m in described["members"]] == ["lag-reader"]
    assert sorted(a["partition"] for a in described["members"][0]["assignment"]) == [0, 1, 2]
    by_partition = {p["partition"]: p for p in described["partitions"]}
    for p in range(3):
        assert by_partition[p]["log_end_offset"] == ends[p]
        assert by_partition[p]["lag"] == ends[p] - max(committed[p], 0)
        assert by_partition[p]["member_id"] == described["members"][0]["member_id"]
    table = spool(broker, "group", "describe", "analytics").stdout
    assert f"TOTAL-LAG    {expected_lag}" in table and "lag-reader" in table

    # While the member is in the group, a reset is refused; a dry run changes nothing.
    busy = spool(broker, "group", "reset-offsets", "analytics", "-t", "clicks", "--to-earliest", "--execute", check=False)
    assert busy.returncode == 1 and "inactive" in busy.stderr and "Stable" in busy.stderr
    consumer.close()
    dry = spool(broker, "group", "reset-offsets", "analytics", "-t", "clicks", "--shift-by", "-2").stdout
    assert "dry run" in dry
    # Without members, the lag counts the partitions the group has offsets for.
    committed_lag = sum(ends[p] - committed[p] for p in range(3) if committed[p] >= 0)
    assert spool_json(broker, "group", "describe", "analytics")["total_lag"] == committed_lag

    plan = spool_json(broker, "group", "reset-offsets", "analytics", "-t", "clicks", "--shift-by", "-2", "--execute")
    new = {r["partition"]: r["new_offset"] for r in plan["partitions"]}
    # From the committed offset, or the end where the group has none.
    assert new == {p: max((committed[p] if committed[p] >= 0 else ends[p]) - 2, 0) for p in range(3)}
    after = spool_json(broker, "group", "describe", "analytics")
    assert after["state"] == "Empty" and after["total_lag"] == sum(ends[p] - new[p] for p in range(3))
    assert {p["partition"]: p["committed_offset"] for p in after["partitions"]} == new

    # The group reads again from the reset offsets.
    consumer = member("analytics")
    behind = max(range(3), key=lambda p: ends[p] - new[p])
    consumer.assign([confluent_kafka.TopicPartition("clicks", behind)])
    resumed = None
    deadline = time.time() + 30
    while resumed is None and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            resumed = msg.offset()
    consumer.close()
    assert resumed == new[behind]

    spool(broker, "group", "reset-offsets", "analytics", "-t", "clicks", "-p", "1", "--to-latest", "--execute")
    assert {p["partition"]: p["committed_offset"] for p in spool_json(broker, "group", "describe", "analytics")["partitions"]}[1] == ends[1]

    assert spool(broker, "group", "delete", "analytics").stdout == "deleted group analytics\n"
    gone = spool(broker, "group", "describe", "analytics", check=False)
    assert gone.returncode == 1 and "group analytics: GROUP_ID_NOT_FOUND" in gone.stderr, gone.stderr


def test_consume_with_a_group_commits_what_it_printed_and_shares_partitions_with_librdkafka(broker):
    """`spool consume --group`: a first run prints part of the topic and commits exactly
    what it printed, a second run prints the rest; then a spool member and a
    confluent-kafka member split the partitions of one group (range assignor), and
    interrupting spool makes it leave the group."""
    spool(broker, "topic", "create", "visits", "-p", "4")
    spool(broker, "produce", "visits", "-f", "kv", input="".join(f"page-{i % 9}\tvisit-{i}\n" for i in range(40)))

    first = [json.loads(line) for line in spool(broker, "consume", "visits", "--group", "web", "-n", "15", "--json").stdout.splitlines()]
    assert len(first) == 15
    described = spool_json(broker, "group", "describe", "web")
    assert described["state"] == "Empty" and described["members"] == []
    committed = {p["partition"]: p["committed_offset"] for p in described["partitions"]}
    printed_next = {}
    for r in first:
        printed_next[r["partition"]] = max(printed_next.get(r["partition"], 0), r["offset"] + 1)
    assert committed == printed_next
    ends = {p["partition"]: p["high_watermark"] for p in spool_json(broker, "topic", "describe", "visits")["partitions"]}
    # An empty group's lag counts the partitions it has offsets for, as Kafka's tool does.
    assert described["total_lag"] == sum(ends[p] - committed[p] for p in committed)

    rest = [json.loads(line) for line in spool(broker, "consume", "visits", "--group", "web", "--json").stdout.splitlines()]
    seen = sorted((r["partition"], r["offset"]) for r in first + rest)
    assert len(rest) == 25 and len(set(seen)) == 40
    assert sorted(r["value"] for r in first + rest) == sorted(f"visit-{i}" for i in range(40))
    assert spool_json(broker, "group", "describe", "web")["total_lag"] == 0
    # --from other than beginning or end means nothing to a group.
    refused = spool(broker, "consume", "visits", "--group", "web", "--from", "3", check=False)
    assert refused.returncode == 1 and "committed offsets" in refused.stderr

    # A mixed group: librdkafka and spool share the partitions, each starting at the
    # offsets the group committed above.
    rd = confluent_kafka.Consumer({
        "bootstrap.servers": broker.address, "group.id": "web", "auto.offset.reset": "error",
        "client.id": "librdkafka-member", "partition.assignment.strategy": "range",
        "heartbeat.interval.ms": 500,
    })
    rd.subscribe(["visits"])
    deadline = time.time() + 30
    while not rd.assignment() and time.time() < deadline:
        rd.poll(0.2)
    assert len(rd.assignment()) == 4
    env = dict(os.environ, SPOOL_BROKERS=broker.address)
    follower = subprocess.Popen([SPOOL, "consume", "visits", "--group", "web", "--follow", "--format", "%p %v\\n"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # The follower's lines, as it prints them: it is interrupted only once it has printed
    # its share, which may come after librdkafka has read its own.
    spool_lines = []

    def read_follower():
        for line in follower.stdout:
            spool_lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read_follower, daemon=True)
    reader.start()
    try:
        members = []
        deadline = time.time() + 40
        while time.time() < deadline:
            rd.poll(0.2)
            members = spool_json(broker, "group", "describe", "web")["members"]
            if len(members) == 2 and len(rd.assignment()) == 2 and all(len(m["assignment"]) == 2 for m in members):
                break
        assert sorted(m["client_id"] for m in members) == ["librdkafka-member", "spool-cli"]
        spool_member = next(m for m in members if m["client_id"] == "spool-cli")
        spool_partitions = sorted(a["partition"] for a in spool_member["assignment"])
        rd_partitions = sorted(tp.partition for tp in rd.assignment())
        assert sorted(spool_partitions + rd_partitions) == [0, 1, 2, 3]

        # New records go to whichever member holds their partition.
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.address})
        for i in range(40):
            producer.produce("visits", value=f"new-{i}", partition=i % 4)
        assert producer.flush(10) == 0
        rd_read = []
        deadline = time.time() + 20
        while len(rd_read) < 20 and time.time() < deadline:
            msg = rd.poll(0.2)
            if msg is not None and not msg.error():
                rd_read.append((msg.partition(), msg.value().decode()))
        assert sorted({p for p, _ in rd_read}) == rd_partitions and len(rd_read) == 20
        deadline = time.time() + 20
        while len(spool_lines) < 20 and time.time() < deadline:
            time.sleep(0.1)
        follower.send_signal(2)
        follower.wait(timeout=30)
        reader.join(timeout=10)
        assert follower.returncode == 0, follower.stderr.read()
        spool_read = [tuple(line.split(" ", 1)) for line in spool_lines]
        assert sorted({int(p) for p, _ in spool_read}) == spool_partitions and len(spool_read) == 20
        assert sorted(v for _, v in spool_read + rd_read) == sorted(f"new-{i}" for i in range(40))

        # Interrupted, spool left the group: librdkafka takes every partition back.
        deadline = time.time() + 30
        while len(rd.assignment()) != 4 and time.time() < deadline:
            rd.poll(0.2)
        assert len(rd.assignment()) == 4
        assert [m["client_id"] for m in spool_json(broker, "group", "describe", "web")["members"]] == ["librdkafka-member"]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        rd.close()


def test_bench_produces_consumes_and_times_round_trips(broker):
    """`spool bench`: the records it reports are in the log (librdkafka counts them), the
    consume run reads them all back, and e2e sends at the rate asked and times each."""
    spool(broker, "topic", "create", "load", "-p", "6")
    produced = spool_json(broker, "bench", "produce", "load", "-n", "3000", "-s", "512", "--acks", "all", "-q")
    assert produced["mode"] == "produce" and produced["messages"] == 3000 and produced["errors"] == 0
    assert produced["bytes"] == 3000 * 512
    latency = produced["latency_ms"]
    assert sorted(latency) == ["max", "p50", "p90", "p99", "p99.9"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.address, "group.id": "count"})
    ends = [consumer.get_watermark_offsets(confluent_kafka.TopicPartition("load", p), timeout=10) for p in range(6)]
    consumer.close()
    assert sum(high - low for low, high in ends) == 3000

    consumed = spool_json(broker, "bench", "consume", "load", "-q")
    assert consumed["messages"] == 3000 and consumed["bytes"] == 3000 * 512 and consumed["latency_ms"] is None

    e2e = spool_json(broker, "bench", "e2e", "load", "-r", "200", "-d", "2", "-q")
    assert e2e["messages"] == 400 and e2e["errors"] == 0
    assert 1.9 < e2e["seconds"] < 10
    assert 0 < e2e["latency_ms"]["p50"] <= e2e["latency_ms"]["max"] < 5000
    # The table for people, with the histogram on one line.
    table = spool(broker, "bench", "produce", "load", "-n", "100", "-q").stdout
    assert "MESSAGES    100" in table and "LATENCY-MS  p50 " in table and "p99.9 " in table
