"""Brokers that reach each other over a secured inter-broker listener: replication and
transaction markers go over SASL_SSL (or mutual TLS) as the broker's own principal, with
the StandardAuthorizer on, driven by confluent-kafka."""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                  UserScramCredentialUpsertion)

from conftest import SPOOL
from test_cluster import CONTROLLER_OFFSET, free_block, stop_together, wait_serving

AUTHORIZER = "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
PLAIN_USERS = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
               'username="broker" password="broker-secret" user_broker="broker-secret" '
               'user_admin="admin-secret" user_alice="alice-secret";')


CLIENT_OFFSET = 2 * CONTROLLER_OFFSET


class SecureNode:
    """`spool server` as one node: BROKER is the inter-broker listener (and serves
    clients too), CLIENT an optional PLAINTEXT one."""

    def __init__(self, root, node_id, base, voters, settings, client_listener):
        self.node_id = node_id
        self.port = base + node_id
        self.client_port = base + CLIENT_OFFSET + node_id
        client = f",CLIENT://127.0.0.1:{self.client_port}" if client_listener else ""
        self.process = subprocess.Popen(
            [SPOOL, "server", "--data-dir", os.path.join(root, f"node-{node_id}"),
             "--listen", f"BROKER://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{base + CONTROLLER_OFFSET + node_id}"
                         f"{client}",
             "--set", f"node.id={node_id}", "--set", f"controller.quorum.voters={voters}",
             "--set", "inter.broker.listener.name=BROKER",
             "--set", "broker.session.timeout.ms=3000",
             "--set", "broker.heartbeat.interval.ms=500",
             *[arg for s in settings for arg in ("--set", s)]],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def secure_cluster(settings, count=3, client_listener=False):
    root = tempfile.mkdtemp(prefix="spool-interop-secure-")
    base = free_block(count, (0, CONTROLLER_OFFSET, CLIENT_OFFSET))
    voters = ",".join(f"{i}@127.0.0.1:{base + CONTROLLER_OFFSET + i}" for i in range(count))
    nodes = [SecureNode(root, i, base, voters, settings, client_listener)
             for i in range(count)]
    for node in nodes:
        wait_serving(node.process, f"node {node.node_id}")
    return root, nodes


def create_secured(config):
    """A topic on every broker with min.insync.replicas=3."""
    admin = AdminClient(config)
    topic = NewTopic("secured", 3, 3, config={"min.insync.replicas": "3"})
    admin.create_topics([topic])["secured"].result(timeout=30)
    metadata = admin.list_topics(topic="secured", timeout=10).topics["secured"]
    assert {p.leader for p in metadata.partitions.values()} == {0, 1, 2}


def replicate_and_commit(config, create=True):
    """On the topic of create_secured, acks=all writes succeed only once both followers
    fetched them; a transaction spanning the three leaders commits only once its markers
    reached each. Returns what read_committed reads."""
    if create:
        create_secured(config)

    delivered, errors = [], []
    producer = Producer({**config, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": 60000})
    for i in range(30):
        producer.produce("secured", value=f"acked-{i}", partition=i % 3,
                         on_delivery=lambda err, msg: (errors if err else delivered).append(
                             err or msg.offset()))
    assert producer.flush(60) == 0
    assert errors == []
    assert len(delivered) == 30

    txn = Producer({**config, "transactional.id": "secured-writer"})
    txn.init_transactions(30)
    txn.begin_transaction()
    for i in range(3):
        txn.produce("secured", value=f"committed-{i}", partition=i)
    txn.commit_transaction(30)
    txn.begin_transaction()
    for i in range(3):
        txn.produce("secured", value=f"aborted-{i}", partition=i)
    txn.flush(30)
    txn.abort_transaction(30)

    consumer = Consumer({**config, "group.id": "secured-reader",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition("secured", p, 0) for p in range(3)])
    values = []
    deadline = time.time() + 60
    quiet_until = None
    # Everything expected, then nothing more for 2 s: the aborted records stay hidden.
    while time.time() < deadline and (quiet_until is None or time.time() < quiet_until):
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
        if quiet_until is None and len(values) >= len(EXPECTED):
            quiet_until = time.time() + 2
    consumer.close()
    return sorted(values)


def bootstrap(nodes, port="port"):
    return ",".join(f"127.0.0.1:{getattr(n, port)}" for n in nodes)


EXPECTED = sorted([f"acked-{i}" for i in range(30)] + [f"committed-{i}" for i in range(3)])


def test_brokers_replicate_and_write_markers_over_sasl_ssl_as_their_own_principal(pki):
    settings = [
        "listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:PLAINTEXT",
        f"ssl.keystore.location={pki['keystore']}",
        f"ssl.truststore.location={pki['ca']}",
        "listener.name.broker.sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        f"listener.name.broker.plain.sasl.jaas.config={PLAIN_USERS}",
        AUTHORIZER, "super.users=User:broker;User:admin",
    ]
    root, nodes = secure_cluster(settings)
    client = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
              "sasl.username": "admin", "sasl.password": "admin-secret",
              "ssl.ca.location": pki["ca"]}
    try:
        assert replicate_and_commit({**client, "bootstrap.servers": bootstrap(nodes)}) \
            == EXPECTED
        # Follower fetches need CLUSTER_ACTION: a client user without it may not send one
        # (a consumer's fetches are not follower fetches, so alice just gets no topic).
        alice = AdminClient({"bootstrap.servers": f"127.0.0.1:{nodes[0].port}",
                             **client, "sasl.username": "alice",
                             "sasl.password": "alice-secret"})
        assert "secured" not in alice.list_topics(timeout=10).topics
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)


def test_brokers_replicate_over_mutual_tls_as_their_certificate_principal(pki):
    """The controller listener is mutual TLS too: the quorum, registrations and
    heartbeats go over it, and it hands nothing to a peer without a trusted certificate."""
    settings = [
        "listener.security.protocol.map=BROKER:SSL,CONTROLLER:SSL",
        f"ssl.keystore.location={pki['keystore']}",
        f"ssl.truststore.location={pki['ca']}",
        "ssl.client.auth=required",
        AUTHORIZER, "super.users=User:CN=localhost;User:CN=alice",
    ]
    root, nodes = secure_cluster(settings)
    client = {"security.protocol": "SSL", "ssl.ca.location": pki["ca"],
              "ssl.certificate.location": pki["client_cert"],
              "ssl.key.location": pki["client_key"]}
    try:
        assert replicate_and_commit({**client, "bootstrap.servers": bootstrap(nodes)}) \
            == EXPECTED
        controller = ("127.0.0.1", nodes[0].port + CONTROLLER_OFFSET)
        assert controller_answer(controller, None) is None
        assert controller_answer(controller, (pki["rogue_cert"], pki["rogue_key"])) is None
        # A certificate the CA signed gets an answer: a vote request whose body does not
        # decode is refused with a reason (status 1).
        answer = controller_answer(controller, (pki["client_cert"], pki["client_key"]))
        assert answer == 1, answer
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)


def controller_answer(address, certificate):
    """Sends a controller frame (a vote request with an empty body, correlation 7) to the
    controller listener at `address`: in plain TCP when `certificate` is None, else over
    TLS with that (certificate, key). The status of the answer, or None when none came
    (a TLS alert is not an answer)."""
    frame = struct.pack(">iib", 5, 7, 1)
    received = b""
    try:
        with socket.create_connection(address, timeout=15) as raw:
            stream = raw
            if certificate is not None:
                context = ssl.create_default_context(cafile=None)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                context.load_cert_chain(*certificate)
                stream = context.wrap_socket(raw, server_hostname="localhost")
            stream.sendall(frame)
            while len(received) < 9:
                chunk = stream.recv(4096)
                if not chunk:
                    break
                received += chunk
    except (ssl.SSLError, ConnectionError, socket.timeout):
        pass
    if len(received) < 9 or struct.unpack(">i", received[4:8])[0] != 7:
        return None
    return received[8]


def test_brokers_log_in_to_each_other_with_scram_once_their_user_exists(pki):
    """SCRAM users live in the metadata log: until the brokers' own user is created,
    followers cannot log in and acks=all writes wait; then replication catches up."""
    settings = [
        "listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:PLAINTEXT,CLIENT:PLAINTEXT",
        f"ssl.keystore.location={pki['keystore']}",
        f"ssl.truststore.location={pki['ca']}",
        "listener.name.broker.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "listener.name.broker.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="broker" password="broker-secret";',
        "replica.fetch.backoff.ms=200",
    ]
    root, nodes = secure_cluster(settings, client_listener=True)
    config = {"bootstrap.servers": bootstrap(nodes, "client_port")}
    try:
        create_secured(config)
        waiting = Producer({**config, "acks": "all", "message.timeout.ms": 3000})
        failed = []
        waiting.produce("secured", value=b"early", partition=0,
                        on_delivery=lambda err, msg: failed.append(err))
        waiting.flush(10)
        assert len(failed) == 1 and failed[0] is not None, failed

        admin = AdminClient(config)
        upsert = UserScramCredentialUpsertion(
            "broker", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
            b"broker-secret")
        admin.alter_user_scram_credentials([upsert])["broker"].result(timeout=30)
        values = replicate_and_commit(config, create=False)
        # The early record may have been written before its wait ran out.
        assert [v for v in values if v != "early"] == EXPECTED
    finally:
        stop_together(nodes)
        shutil.rmtree(root, ignore_errors=True)


def test_a_broker_that_cannot_log_in_to_the_others_does_not_start_half_configured(pki):
    """Settings the inter-broker login cannot work with stop the start, naming them."""
    for settings, expected in [
        (["listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:PLAINTEXT",
          f"ssl.keystore.location={pki['keystore']}", f"ssl.truststore.location={pki['ca']}",
          "listener.name.broker.sasl.enabled.mechanisms=PLAIN",
          f"listener.name.broker.plain.sasl.jaas.config={PLAIN_USERS}"],
         "set sasl.mechanism.inter.broker.protocol"),
        (["listener.security.protocol.map=BROKER:SSL,CONTROLLER:SSL",
          f"ssl.keystore.location={pki['keystore']}"],
         "no truststore to verify them"),
    ]:
        root = tempfile.mkdtemp(prefix="spool-interop-secure-")
        try:
            result = subprocess.run(
                [SPOOL, "server", "--data-dir", root, "--listen", "BROKER://127.0.0.1:0",
                 "--set", "inter.broker.listener.name=BROKER", *[
                     arg for s in settings for arg in ("--set", s)]],
                capture_output=True, text=True, timeout=30)
            assert result.returncode != 0
            assert expected in result.stderr, result.stderr
        finally:
            shutil.rmtree(root, ignore_errors=True)
