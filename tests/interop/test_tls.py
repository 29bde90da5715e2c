"""TLS listeners (SSL) with real clients: kafka-python and kcat over SSL, confluent-kafka
with client certificates (mTLS), and what happens to clients that cannot talk TLS or
have no certificate. The test makes its own CA and certificates with openssl."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import SPOOL, Broker


@pytest.fixture
def tls_broker(pki):
    """PLAINTEXT, SSL (no client certificate) and MTLS (an SSL listener that requires
    one), each on a free port."""
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0,MTLS://127.0.0.1:0",
               "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL",
               f"ssl.keystore.location={pki['keystore']}",
               f"listener.name.mtls.ssl.truststore.location={pki['ca']}",
               "listener.name.mtls.ssl.client.auth=required",
               "num.partitions=1")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def test_kafka_python_produces_and_consumes_over_ssl(tls_broker, pki):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    tls = {"bootstrap_servers": tls_broker.listeners["SSL"], "security_protocol": "SSL",
           "ssl_cafile": pki["ca"]}
    producer = KafkaProducer(acks="all", **tls)
    offsets = [producer.send("tls-topic", key=b"k", value=f"secret-{i}".encode())
               .get(timeout=30).offset for i in range(50)]
    producer.close()
    assert offsets == list(range(50))
    consumer = KafkaConsumer(consumer_timeout_ms=10000, **tls)
    consumer.assign([TopicPartition("tls-topic", 0)])
    consumer.seek_to_beginning()
    values = []
    for message in consumer:
        values.append(message.value.decode())
        if len(values) == 50:
            break
    consumer.close()
    assert values == [f"secret-{i}" for i in range(50)]
    # The SSL listener advertises itself: the broker in its metadata is on its port.
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(**tls)
    brokers = admin.describe_cluster()["brokers"]
    admin.close()
    assert [(b["host"], b["port"]) for b in brokers] == [
        ("127.0.0.1", int(tls_broker.listeners["SSL"].rsplit(":", 1)[1]))]


def test_kcat_reads_over_ssl_what_was_written_in_plaintext(tls_broker, pki):
    lines = "".join(f"value-{i}\n" for i in range(20))
    subprocess.run(["kcat", "-b", tls_broker.address, "-P", "-t", "mixed"], input=lines,
                   text=True, check=True, timeout=60)
    result = subprocess.run(
        ["kcat", "-b", tls_broker.listeners["SSL"], "-X", "security.protocol=ssl",
         "-X", f"ssl.ca.location={pki['ca']}", "-C", "-t", "mixed", "-o", "beginning", "-e",
         "-f", "%o %s\n"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{i} value-{i}" for i in range(20)]


def test_confluent_kafka_with_a_client_certificate_and_without_one(tls_broker, pki):
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    mtls = {"bootstrap.servers": tls_broker.listeners["MTLS"], "security.protocol": "SSL",
            "ssl.ca.location": pki["ca"], "ssl.certificate.location": pki["client_cert"],
            "ssl.key.location": pki["client_key"]}
    producer = Producer({**mtls, "acks": "all", "enable.idempotence": True})
    delivered = []
    for i in range(100):
        producer.produce("mtls-topic", value=f"m-{i}",
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(30) == 0
    assert delivered == [(None, i) for i in range(100)]
    consumer = Consumer({**mtls, "group.id": "mtls-readers", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("mtls-topic", 0, 0)])
    values = []
    deadline = time.time() + 30
    while len(values) < 100 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    assert values == [f"m-{i}" for i in range(100)]

    # Without a certificate the handshake fails: no metadata, however long one waits.
    anonymous = AdminClient({"bootstrap.servers": tls_broker.listeners["MTLS"],
                             "security.protocol": "SSL", "ssl.ca.location": pki["ca"]})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=5)
    # A certificate another CA signed is refused too (Python's own TLS here).
    host, port = tls_broker.listeners["MTLS"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=pki["ca"])
    context.load_cert_chain(pki["rogue_cert"], pki["rogue_key"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x00\x00\x00\x01\x00")
                assert tls.recv(1) == b""


def test_a_client_that_does_not_speak_tls_is_dropped_and_others_go_on(tls_broker, pki):
    from kafka import KafkaProducer

    host, port = tls_broker.listeners["SSL"].rsplit(":", 1)
    # A plaintext ApiVersions request on the SSL port: the broker closes the connection.
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"\x00\x00\x00\x0b\x00\x12\x00\x00\x00\x00\x00\x01\x00\x01x")
        raw.settimeout(10)
        received = b""
        try:
            while chunk := raw.recv(4096):
                received += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        # Whatever came back is a TLS alert at most, never a Kafka response.
        assert not received.startswith(b"\x00\x00"), received[:16]
    # A connection that never starts its handshake holds nobody up: TLS clients are
    # served meanwhile.
    idle = socket.create_connection((host, int(port)), timeout=10)
    producer = KafkaProducer(bootstrap_servers=tls_broker.listeners["SSL"],
                             security_protocol="SSL", ssl_cafile=pki["ca"])
    assert producer.send("after-garbage", b"ok").get(timeout=30).offset == 0
    producer.close()
    idle.close()


def test_a_broker_with_an_unreadable_keystore_stops_at_start_naming_the_setting():
    from conftest import SPOOL

    data_dir = tempfile.mkdtemp(prefix="spool-interop-")
    try:
        result = subprocess.run(
            [SPOOL, "server", "--data-dir", data_dir, "--set",
             "listeners=PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0", "--set",
             "ssl.keystore.location=/nonexistent/broker.pem"],
            capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert result.returncode != 0
    assert "ssl.keystore.location" in result.stderr, result.stderr
    assert "spool: data in" not in result.stdout


def test_a_replaced_keystore_file_is_served_without_a_restart(pki):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaProducer

    directory = tempfile.mkdtemp(prefix="spool-interop-rotation-")
    keystore = os.path.join(directory, "broker.pem")
    shutil.copy(pki["keystore"], keystore)
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
               f"ssl.keystore.location={keystore}", "num.partitions=1")
    try:
        def reachable(ca, timeout):
            admin = AdminClient({"bootstrap.servers": b.listeners["SSL"],
                                 "security.protocol": "SSL", "ssl.ca.location": ca})
            try:
                admin.list_topics(timeout=timeout)
                return True
            except KafkaException:
                return False

        def produce(ca):
            producer = KafkaProducer(bootstrap_servers=b.listeners["SSL"],
                                     security_protocol="SSL", ssl_cafile=ca)
            offset = producer.send("rotated", b"x").get(timeout=10).offset
            producer.close()
            return offset

        assert produce(pki["ca"]) == 0
        assert not reachable(pki["rogue_ca"], 2)
        # The certificate is rotated to one of another CA by replacing the file; the
        # broker serves it from its next look at the file (within a second or so).
        shutil.copy(pki["next_keystore"], keystore)
        deadline = time.time() + 10
        while not reachable(pki["rogue_ca"], 2) and time.time() < deadline:
            time.sleep(0.2)
        assert produce(pki["rogue_ca"]) == 1
        # Clients that trust only the old CA no longer get in.
        assert not reachable(pki["ca"], 2)
    finally:
        b.stop()
        shutil.rmtree(b.data_dir, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)


def test_the_cli_over_ssl_with_and_without_a_client_certificate(tls_broker, pki):
    def spool(listener, *args, security=()):
        return subprocess.run([SPOOL, "--brokers", tls_broker.listeners[listener],
                               "--security-protocol", "SSL", *security, *args],
                              capture_output=True, text=True, timeout=60)

    trusted = ["--ssl-ca-location", pki["ca"]]
    made = spool("SSL", "topic", "create", "cli-tls", "-p", "1", security=trusted)
    assert made.returncode == 0, made.stderr
    sent = subprocess.run([SPOOL, "--brokers", tls_broker.listeners["SSL"],
                           "--security-protocol", "SSL", *trusted, "produce", "cli-tls"],
                          input="one\ntwo\n", capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    # On the listener that requires a certificate, alice's is accepted.
    mine = trusted + ["--ssl-certificate-location", pki["client_cert"],
                      "--ssl-key-location", pki["client_key"]]
    read = spool("MTLS", "consume", "cli-tls", "--format", "%v\\n", security=mine)
    assert read.returncode == 0 and read.stdout.splitlines() == ["one", "two"], read.stderr
    # Without a certificate there, or without trusting the broker's CA, nothing works.
    refused = spool("MTLS", "topic", "list", security=trusted)
    assert refused.returncode == 1
    untrusted = spool("SSL", "topic", "list", security=["--ssl-ca-location", pki["rogue_ca"]])
    assert untrusted.returncode == 1 and "TLS handshake failed" in untrusted.stderr, untrusted.stderr
