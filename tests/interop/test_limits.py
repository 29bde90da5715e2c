"""Connection limits: a flood of connections from one address stays within
max.connections.per.ip while the broker keeps serving other addresses and, once the flood
is gone, that address too; max.connections holds new connections until one closes."""
import resource
import shutil
import socket
import struct
import time

from confluent_kafka import Producer

from conftest import Broker


def api_versions(sock, correlation_id=7):
    """Sends ApiVersions v0 and returns (correlation ID, error code) of the answer."""
    client_id = b"limits-test"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", receive(sock, 4))[0]
    answer = receive(sock, size)
    return struct.unpack(">ih", answer[:6])


def receive(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def still_open(sock):
    """Whether the broker has left the connection open (it sends nothing unasked)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def connect(address, source="127.0.0.1"):
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def assert_a_producer_delivers(address, topic):
    """A real client (confluent-kafka) connects and has a record acknowledged."""
    delivered = []
    producer = Producer({"bootstrap.servers": address})
    producer.produce(topic, value=b"x", on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(30) == 0 and delivered == [None]


def test_a_flood_from_one_address_stays_within_its_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    flood_size = min(3000, wanted - 500)
    broker = Broker("max.connections.per.ip=50",
                    "max.connections.per.ip.overrides=127.0.0.2:100", "num.partitions=1")
    flood = []
    try:
        for _ in range(flood_size):
            flood.append(connect(broker.address))
        # The broker closes what is over the limit as it accepts it.
        deadline = time.time() + 20
        while time.time() < deadline:
            open_ones = [s for s in flood if still_open(s)]
            if len(open_ones) <= 50:
                break
            time.sleep(0.2)
        assert len(open_ones) == 50, f"{len(open_ones)} of {flood_size} connections open"
        # Those 50 are served.
        assert api_versions(open_ones[0]) == (7, 0)
        # Another address is served meanwhile, up to its own (overridden) limit.
        others = [connect(broker.address, source="127.0.0.2") for _ in range(60)]
        assert all(api_versions(s, i) == (i, 0) for i, s in enumerate(others))
        for s in others:
            s.close()
        # Once the flood is gone, its address is served again by a real client.
        for s in flood:
            s.close()
        flood = []
        time.sleep(0.5)
        assert_a_producer_delivers(broker.address, "after-the-flood")
    finally:
        for s in flood:
            s.close()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def test_max_connections_holds_new_connections_until_one_closes():
    broker = Broker("max.connections=5", "num.partitions=1")
    held = []
    try:
        held = [connect(broker.address) for _ in range(5)]
        assert all(api_versions(s) == (7, 0) for s in held)
        # The sixth is queued by the kernel but not taken: no answer.
        waiting = connect(broker.address)
        waiting.settimeout(1)
        try:
            api_versions(waiting)
            raise AssertionError("a sixth connection was served")
        except socket.timeout:
            pass
        # A place frees up and the waiting connection is served.
        held.pop().close()
        waiting.settimeout(10)
        size = struct.unpack(">i", receive(waiting, 4))[0]
        assert struct.unpack(">ih", receive(waiting, size)[:6]) == (7, 0)
        waiting.close()
    finally:
        for s in held:
            s.close()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def test_max_connection_creation_rate_spaces_out_accepts_and_serves_them_all():
    """max.connection.creation.rate (KIP-612): over the rate, the listener waits before
    accepting the next connection; every connection is still served, a real client's
    too."""
    broker = Broker("max.connection.creation.rate=2", "num.partitions=1")
    opened = []
    try:
        # 2 per second measured over ten seconds at first: about twenty are accepted at
        # once, then one every half second or so.
        start = time.monotonic()
        took = []
        for i in range(24):
            sock = connect(broker.address)
            opened.append(sock)
            assert api_versions(sock, i) == (i, 0)
            took.append(time.monotonic() - start)
        assert took[17] < 2.0, took
        # The last four came at least ~0.4 s apart each, accepts spaced out.
        assert took[-1] - took[-5] >= 1.6, took
        for s in opened:
            s.close()
        opened = []
        assert_a_producer_delivers(broker.address, "rate-limited")
    finally:
        for s in opened:
            s.close()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
