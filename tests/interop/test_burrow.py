"""Burrow (LinkedIn's consumer-lag checker, Debian's package) reads a group's lag from
Spool: it decodes the commits in `__consumer_offsets` and asks for the partitions' ends with
ListOffsets v0, as sarama 1.22 does. Burrow keeps its own coordination in ZooKeeper,
Debian's package too, run here on loopback."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import commit, free_port
from test_cluster import wait_for

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"


def zookeeper_serves(port):
    """Whether ZooKeeper serves clients ("srvr" names its mode only then; "ruok" answers
    earlier)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"srvr")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return b"Mode: standalone" in answer
    except OSError:
        return False


def burrow_lag(port):
    """Burrow's view of group `lagging`: {partition: current lag} and the total, or None
    while it does not know the group yet."""
    url = f"http://127.0.0.1:{port}/v3/kafka/spool/consumer/lagging/lag"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.load(response)["status"]
    except (urllib.error.URLError, OSError):
        return None
    partitions = {p["partition"]: p["current_lag"] for p in status["partitions"]
                  if p["topic"] == "burrowed"}
    return partitions, status["totallag"]


def test_burrow_reads_group_lag_from_spool(broker):
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("burrowed", 2, 1)])["burrowed"].result(timeout=30)
    producer = Producer({"bootstrap.servers": broker.address})
    for partition, count in [(0, 4), (1, 6)]:
        for i in range(count):
            producer.produce("burrowed", f"r{i}".encode(), partition=partition)
    assert producer.flush(30) == 0
    commit(broker.address, "lagging", "burrowed", {0: 3, 1: 2})

    root = tempfile.mkdtemp(prefix="spool-interop-burrow-")
    zk_port, http_port = free_port(), free_port()
    with open(os.path.join(root, "zoo.cfg"), "w") as f:
        f.write(f"tickTime=2000\ndataDir={root}/zk\nclientPort={zk_port}\n"
                "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                "4lw.commands.whitelist=srvr\n")
    os.mkdir(os.path.join(root, "conf"))
    with open(os.path.join(root, "conf", "burrow.toml"), "w") as f:
        f.write(f"""
[general]
pidfile="{root}/burrow.pid"
[logging]
level="info"
[zookeeper]
servers=["127.0.0.1:{zk_port}"]
timeout=6
root-path="/burrow"
[client-profile.spool]
client-id="burrow-interop"
kafka-version="2.1.0"
[cluster.spool]
class-name="kafka"
servers=["{broker.address}"]
client-profile="spool"
topic-refresh=5
offset-refresh=2
[consumer.spool]
class-name="kafka"
cluster="spool"
servers=["{broker.address}"]
client-profile="spool"
offsets-topic="__consumer_offsets"
start-latest=false
[storage.default]
class-name="inmemory"
workers=2
intervals=10
expire-group=604800
min-distance=1
[evaluator.default]
class-name="caching"
expire-cache=1
[httpserver.default]
address="127.0.0.1:{http_port}"
""")
    log = open(os.path.join(root, "burrow.log"), "w")
    zookeeper = subprocess.Popen(
        ["java", "-Xmx256m", "-cp", ZOOKEEPER_JAR,
         "org.apache.zookeeper.server.ZooKeeperServerMain", os.path.join(root, "zoo.cfg")],
        stdout=log, stderr=subprocess.STDOUT)
    burrow = None
    try:
        wait_for("ZooKeeper", lambda: zookeeper_serves(zk_port), 60)
        def start_burrow():
            # A pid file left by a Burrow that gave up would stop the next one.
            if os.path.exists(os.path.join(root, "burrow.pid")):
                os.remove(os.path.join(root, "burrow.pid"))
            return subprocess.Popen(["Burrow", "-config-dir", os.path.join(root, "conf")],
                                    stdout=log, stderr=subprocess.STDOUT)

        burrow = start_burrow()
        starts = [1]

        def burrow_sees(expected):
            nonlocal burrow
            if burrow.poll() is not None:
                # Burrow gives up when its first ZooKeeper session fails, which a ZooKeeper
                # just started can do: it is started again, twice at most.
                assert starts[0] < 3, "Burrow stopped (its log is below)"
                starts[0] += 1
                burrow = start_burrow()
                return False
            return burrow_lag(http_port) == expected

        # Lag = high watermark - committed: 4 - 3 and 6 - 2.
        wait_for("Burrow's lag 1 and 4", lambda: burrow_sees(({0: 1, 1: 4}, 5)), 90)

        # A new commit reaches Burrow through __consumer_offsets.
        commit(broker.address, "lagging", "burrowed", {0: 4, 1: 5})
        wait_for("Burrow's lag 0 and 1", lambda: burrow_sees(({0: 0, 1: 1}, 1)), 60)
    except AssertionError:
        log.flush()
        with open(os.path.join(root, "burrow.log"), errors="replace") as f:
            print(f.read()[-4000:])
        raise
    finally:
        for process in (burrow, zookeeper):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
