"""The admin API: /metrics read with the Prometheus client library's OpenMetrics parser
after a known sequence of produces, commits and fetches by real clients; /health and
/ready; JSON logs."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SPOOL, commit, scrape
from test_cluster import wait_for

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grafana",
                         "spool-dashboard.json")


def values(samples, name, **match):
    """{labels as a sorted tuple without the matched ones: value} of `name`'s samples
    whose labels include `match`."""
    out = {}
    for labels, value in samples.get(name, []):
        if all(labels.get(k) == str(v) for k, v in match.items()):
            rest = tuple(sorted((k, v) for k, v in labels.items() if k not in match))
            out[rest] = value
    return out


def lag(samples, group):
    return {int(dict(k)["partition"]): v
            for k, v in values(samples, "spool_consumer_group_lag", group=group, topic="orders").items()}


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_follow_produces_commits_and_fetches(broker):
    assert broker.admin, "spool did not report its admin API"
    assert get(f"{broker.admin}/health") == (200, "ok\n")
    assert get(f"{broker.admin}/ready") == (200, "ready\n")
    assert get(f"{broker.admin}/nothing")[0] == 404

    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("orders", 3, 1)])["orders"].result(timeout=30)
    producer = Producer({"bootstrap.servers": broker.address, "acks": "all", "linger.ms": 5})
    for partition, count in [(0, 10), (1, 20), (2, 30)]:
        for i in range(count):
            producer.produce("orders", f"order-{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0

    commit(broker.address, "billing", "orders", {0: 4, 1: 20, 2: 0})
    commit(broker.address, "audit", "orders", {1: 5})
    samples = scrape(broker.admin)
    # Lag is the high watermark minus the committed offset, per group and partition.
    assert lag(samples, "billing") == {0: 6, 1: 0, 2: 30}
    assert lag(samples, "audit") == {1: 15}
    assert values(samples, "spool_topic_messages_in_total", topic="orders") == {(): 60}
    assert values(samples, "spool_topic_bytes_in_total", topic="orders")[()] > 60 * 9
    sizes = values(samples, "spool_log_size_bytes", topic="orders")
    segments = values(samples, "spool_log_segments", topic="orders")
    assert sorted(dict(k)["partition"] for k in sizes) == ["0", "1", "2"]
    assert all(size > 0 for size in sizes.values())
    assert set(segments.values()) == {1}
    produces = values(samples, "spool_request_duration_seconds_count", request="Produce")
    assert produces and all(int(dict(k)["version"]) >= 3 for k in produces)
    assert sum(produces.values()) >= 3
    # acks=all appends were made durable by the flusher's syncs.
    assert values(samples, "spool_fsync_duration_seconds_count")[()] >= 1
    assert values(samples, "spool_under_replicated_partitions") == {(): 0}
    assert values(samples, "spool_offline_partitions") == {(): 0}
    assert values(samples, "spool_authentication_failures_total") == {
        (("listener", "PLAINTEXT"),): 0}

    # A consumer reads all 60 records once, then waits at the end in a long poll.
    reader = Consumer({"bootstrap.servers": broker.address, "group.id": "reader",
                       "enable.auto.commit": False, "fetch.wait.max.ms": 10000})
    reader.assign([TopicPartition("orders", p, 0) for p in range(3)])
    read = 0
    deadline = time.time() + 30
    while read < 60 and time.time() < deadline:
        message = reader.poll(1)
        if message is not None and not message.error():
            read += 1
    assert read == 60
    wait_for("the reader's fetch parked", lambda: values(
        scrape(broker.admin), "spool_purgatory_size", operation="fetch") == {(): 1})
    samples = scrape(broker.admin)
    assert values(samples, "spool_topic_messages_out_total", topic="orders") == {(): 60}
    assert values(samples, "spool_connections", listener="PLAINTEXT")[()] >= 1
    assert sum(values(samples, "spool_request_duration_seconds_count", request="Fetch").values()) >= 1
    # The group that committed nothing has no lag to report.
    assert lag(samples, "reader") == {}
    # Every series the Grafana dashboard queries is one the broker serves.
    dashboard = json.load(open(DASHBOARD))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    named = {name for q in queries for name in re.findall(r"\bspool_[a-z_]+", q)}
    assert len(named) >= 15 and named <= set(samples), named - set(samples)
    reader.close()
    producer = None

    # A commit moves the lag; a deleted group leaves the metrics.
    commit(broker.address, "billing", "orders", {0: 10, 2: 25})
    admin.delete_consumer_groups(["audit"])["audit"].result(timeout=30)
    samples = scrape(broker.admin)
    assert lag(samples, "billing") == {0: 0, 1: 0, 2: 5}
    assert lag(samples, "audit") == {}

    # So does a deleted topic, and closed connections are no longer counted.
    admin.delete_topics(["orders"])["orders"].result(timeout=30)
    admin = None
    wait_for("the topic gone", lambda: not any(
        labels.get("topic") == "orders" for samples in [scrape(broker.admin)]
        for series in samples.values() for labels, _ in series))
    wait_for("every connection closed", lambda: values(
        scrape(broker.admin), "spool_connections", listener="PLAINTEXT") == {(): 0})


def test_ready_only_once_the_quorum_has_a_majority_and_json_logs():
    from test_cluster import CONTROLLER_OFFSET, free_block, stop_together

    root = tempfile.mkdtemp(prefix="spool-interop-ready-")
    base = free_block(2)
    voters = ",".join(f"{i}@127.0.0.1:{base + CONTROLLER_OFFSET + i}" for i in range(2))
    nodes = []

    class Node:
        def __init__(self, i):
            self.node_id = i
            self.log = os.path.join(root, f"node-{i}.log")
            env = dict(os.environ, SPOOL_LOG_FORMAT="json", SPOOL_LOG="info")
            self.process = subprocess.Popen(
                [SPOOL, "server", "--data-dir", os.path.join(root, f"node-{i}"),
                 "--listen", f"PLAINTEXT://127.0.0.1:{base + i},"
                             f"CONTROLLER://127.0.0.1:{base + CONTROLLER_OFFSET + i}",
                 "--admin-listen", "127.0.0.1:0",
                 "--set", f"node.id={i}", "--set", f"controller.quorum.voters={voters}"],
                stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True, env=env)
            # The admin API is up before the broker has joined.
            self.admin = None
            while self.admin is None:
                line = self.process.stdout.readline()
                assert line, "spool stopped before its admin API was up"
                if line.startswith("spool: admin API on "):
                    self.admin = line.split()[-1]

    try:
        nodes.append(Node(0))
        # Alone, node 0 lives but cannot join: one voter of two is no majority.
        time.sleep(1)
        assert get(f"{nodes[0].admin}/health") == (200, "ok\n")
        assert get(f"{nodes[0].admin}/ready") == (503, "starting\n")
        assert get(f"{nodes[0].admin}/metrics")[0] == 503
        nodes.append(Node(1))
        for node in nodes:
            wait_for(f"node {node.node_id} ready",
                     lambda node=node: get(f"{node.admin}/ready") == (200, "ready\n"), 60)
        samples = scrape(nodes[1].admin)
        assert values(samples, "spool_build_info")
        stop_together(nodes)
        # Every log line is one JSON object with a time, a level, a target and fields;
        # Spool's own events carry a message.
        lines = [line for node in nodes for line in open(node.log) if line.strip()]
        entries = [json.loads(line) for line in lines]
        assert entries, "no log lines at level info"
        for entry in entries:
            assert entry["level"] in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR"), entry
            assert entry["timestamp"] and entry["target"] and "fields" in entry, entry
        ours = [e for e in entries if e["target"].startswith("spool")]
        assert ours and all("message" in e["fields"] for e in ours), ours[:3]
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)


def test_a_stalled_follower_shows_as_isr_shrink_then_expand_on_the_leader():
    import test_replication
    from test_replication import TOPIC, active_controller, kill_all, partitions

    # The leader drops a silent follower from the ISR after 1.5 s, long before the
    # controller would fence it for missing heartbeats.
    root, nodes, bootstrap = test_replication.start_nodes(
        "spool-interop-isr-", 3,
        lambda _: ("replica.lag.time.max.ms=1500", "broker.session.timeout.ms=60000"))
    stalled = None
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 3)])[TOPIC].result(timeout=30)
        wait_for("a full ISR", lambda: partitions(admin).get(0, (-1, []))[1] == [0, 1, 2])
        leader_id = partitions(admin)[0][0]
        leader = nodes[leader_id]
        stalled = next(n for n in nodes
                       if n.node_id not in (leader_id, active_controller(nodes)))
        before = scrape(leader.admin)
        assert values(before, "spool_under_replicated_partitions") == {(): 0}

        stalled.process.send_signal(signal.SIGSTOP)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "1"})
        producer.produce(TOPIC, b"while one follower is stalled")
        assert producer.flush(30) == 0
        wait_for("the stalled follower out of the ISR", lambda: values(
            scrape(leader.admin), "spool_under_replicated_partitions") == {(): 1})
        shrunk = scrape(leader.admin)
        assert (values(shrunk, "spool_isr_shrinks_total")[()]
                == values(before, "spool_isr_shrinks_total")[()] + 1)

        stalled.process.send_signal(signal.SIGCONT)
        stalled = None
        wait_for("the follower back in the ISR", lambda: values(
            scrape(leader.admin), "spool_under_replicated_partitions") == {(): 0}, 60)
        expanded = scrape(leader.admin)
        assert (values(expanded, "spool_isr_expands_total")[()]
                >= values(shrunk, "spool_isr_expands_total")[()] + 1)
        assert values(expanded, "spool_offline_partitions") == {(): 0}
    finally:
        if stalled is not None:
            stalled.process.send_signal(signal.SIGCONT)
        kill_all(nodes)
        shutil.rmtree(root, ignore_errors=True)
