"""SASL logins with real clients: SCRAM-SHA-512 and PLAIN over SASL_SSL with
confluent-kafka, SCRAM-SHA-256 over SASL_SSL with kcat, SCRAM over SASL_PLAINTEXT with
kafka-python; SCRAM credentials managed with AlterUserScramCredentials; refusals (wrong
password, unknown user, a replayed SCRAM message, requests and oversized frames before
login); re-authentication (KIP-368)."""
import base64
import hashlib
import hmac
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from conftest import SPOOL, Broker, scrape

@pytest.fixture(scope="module")
def sasl_broker(pki):
    """PLAINTEXT (where the test manages credentials), SASL_SSL (PLAIN and SCRAM) and
    SASL_PLAINTEXT (SCRAM only, sessions of 3 s)."""
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,SASL_SSL://127.0.0.1:0,"
               "SASL_PLAINTEXT://127.0.0.1:0",
               "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,"
               "SASL_PLAINTEXT:SASL_PLAINTEXT",
               f"ssl.keystore.location={pki['keystore']}",
               "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
               "listener.name.sasl_ssl.plain.sasl.jaas.config="
               "org.apache.kafka.common.security.plain.PlainLoginModule required "
               'user_admin="admin-secret" user_bob="bob-secret";',
               "listener.name.sasl_plaintext.connections.max.reauth.ms=3000",
               "num.partitions=1")
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": b.address})
    futures = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion("alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                     b"alice-secret"),
        UserScramCredentialUpsertion("alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"alice-secret"),
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"carol-secret"),
    ])
    for future in futures.values():
        future.result(timeout=30)
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def sasl_ssl(broker, pki, mechanism, user, password):
    return {"bootstrap.servers": broker.listeners["SASL_SSL"], "security.protocol": "SASL_SSL",
            "ssl.ca.location": pki["ca"], "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def produce_and_consume(config, topic, count):
    """Produces `count` records and reads them back; the offsets and values."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({**config, "acks": "all", "enable.idempotence": True})
    delivered = []
    for i in range(count):
        producer.produce(topic, value=f"{topic}-{i}",
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(30) == 0
    consumer = Consumer({**config, "group.id": f"{topic}-readers"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.time() + 30
    while len(values) < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    return delivered, values


def test_confluent_kafka_over_sasl_ssl_with_scram_sha_512_and_plain(sasl_broker, pki):
    for mechanism, user, password in [("SCRAM-SHA-512", "alice", "alice-secret"),
                                      ("PLAIN", "bob", "bob-secret")]:
        topic = f"sasl-{mechanism.lower()}"
        delivered, values = produce_and_consume(
            sasl_ssl(sasl_broker, pki, mechanism, user, password), topic, 100)
        assert delivered == [(None, i) for i in range(100)], mechanism
        assert values == [f"{topic}-{i}" for i in range(100)], mechanism


def test_credentials_are_described_without_secrets_and_checked_when_altered(sasl_broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": sasl_broker.address})
    described = {user: future.result(timeout=30) for user, future in
                 admin.describe_user_scram_credentials(["alice", "carol"]).items()}
    assert sorted((c.mechanism, c.iterations) for c in
                  described["alice"].scram_credential_infos) == [
        (ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 8192)]
    assert [(c.mechanism, c.iterations) for c in described["carol"].scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_256, 4096)]
    with pytest.raises(KafkaException) as unknown:
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(timeout=30)
    assert unknown.value.args[0].name() == "RESOURCE_NOT_FOUND"

    def refusal(alteration):
        future = admin.alter_user_scram_credentials([alteration])
        with pytest.raises(KafkaException) as refused:
            list(future.values())[0].result(timeout=30)
        return refused.value.args[0].name()

    assert refusal(UserScramCredentialUpsertion(
        "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 100), b"pw")) == \
        "UNACCEPTABLE_CREDENTIAL"
    assert refusal(UserScramCredentialUpsertion(
        "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 20000), b"pw")) == \
        "UNACCEPTABLE_CREDENTIAL"
    assert refusal(UserScramCredentialDeletion("dave", ScramMechanism.SCRAM_SHA_512)) == \
        "RESOURCE_NOT_FOUND"
    # Nothing was stored for dave.
    with pytest.raises(KafkaException):
        admin.describe_user_scram_credentials(["dave"])["dave"].result(timeout=30)


def test_kcat_over_sasl_ssl_with_scram_sha_256(sasl_broker, pki):
    lines = "".join(f"kcat-{i}\n" for i in range(20))
    security = ["-X", "security.protocol=sasl_ssl", "-X", f"ssl.ca.location={pki['ca']}",
                "-X", "sasl.mechanism=SCRAM-SHA-256", "-X", "sasl.username=alice",
                "-X", "sasl.password=alice-secret"]
    subprocess.run(["kcat", "-b", sasl_broker.listeners["SASL_SSL"], *security, "-P",
                    "-t", "kcat-sasl"], input=lines, text=True, check=True, timeout=60)
    result = subprocess.run(
        ["kcat", "-b", sasl_broker.listeners["SASL_SSL"], *security, "-C", "-t", "kcat-sasl",
         "-o", "beginning", "-e", "-f", "%o %s\n"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{i} kcat-{i}" for i in range(20)]
    # A wrong password gets nothing.
    wrong = [arg.replace("alice-secret", "guess") for arg in security]
    result = subprocess.run(
        ["kcat", "-b", sasl_broker.listeners["SASL_SSL"], *wrong, "-L", "-m", "5"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr, result.stderr


def test_kafka_python_over_sasl_plaintext_with_scram(sasl_broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    config = {"bootstrap_servers": sasl_broker.listeners["SASL_PLAINTEXT"],
              "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
              "sasl_plain_username": "carol", "sasl_plain_password": "carol-secret"}
    producer = KafkaProducer(acks="all", **config)
    offsets = [producer.send("kp-sasl", f"v{i}".encode()).get(timeout=30).offset
               for i in range(30)]
    producer.close()
    assert offsets == list(range(30))
    consumer = KafkaConsumer(consumer_timeout_ms=10000, **config)
    consumer.assign([TopicPartition("kp-sasl", 0)])
    consumer.seek_to_beginning()
    values = [m.value for _, m in zip(range(30), consumer)]
    consumer.close()
    assert values == [f"v{i}".encode() for i in range(30)]


def test_wrong_passwords_and_unknown_users_are_refused(sasl_broker, pki):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    def failures():
        counted = scrape(sasl_broker.admin)["spool_authentication_failures_total"]
        return {labels["listener"]: value for labels, value in counted}

    before = failures()
    for mechanism, user, password in [("SCRAM-SHA-512", "alice", "wrong"),
                                      ("SCRAM-SHA-512", "mallory", "alice-secret"),
                                      ("SCRAM-SHA-256", "alice", "alice-secret-"),
                                      ("PLAIN", "bob", "alice-secret"),
                                      ("PLAIN", "mallory", "bob-secret")]:
        errors = []
        admin = AdminClient({**sasl_ssl(sasl_broker, pki, mechanism, user, password),
                             "error_cb": errors.append})
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1)
        deadline = time.time() + 10
        while not errors and time.time() < deadline:
            admin.poll(0.2)
        assert errors and errors[0].name() == "_AUTHENTICATION", (mechanism, user, errors)
        assert "Authentication failed" in errors[0].str(), errors[0].str()
    # Each refused login is counted on its listener's metric (a client may try again).
    after = failures()
    assert after["SASL_SSL"] - before["SASL_SSL"] >= 5
    assert after["PLAINTEXT"] == before["PLAINTEXT"] == 0


# A client written here, to send what real clients never do.

def frame(api_key, version, correlation_id, body):
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def receive(sock):
    """One response frame's body after the correlation ID; b"" when the broker closed."""
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    size = exactly(4)
    if size is None:
        return b""
    return exactly(struct.unpack(">i", size)[0])[4:]


def handshake(sock, mechanism):
    body = struct.pack(">h", len(mechanism)) + mechanism.encode()
    sock.sendall(frame(17, 1, 1, body))
    return struct.unpack(">h", receive(sock)[:2])[0]


def authenticate(sock, token, correlation_id):
    """SaslAuthenticate v1: (error code, auth bytes, session lifetime ms)."""
    sock.sendall(frame(36, 1, correlation_id, struct.pack(">i", len(token)) + token))
    body = receive(sock)
    if not body:
        return None
    error, = struct.unpack(">h", body[:2])
    message_len, = struct.unpack(">h", body[2:4])
    at = 4 + max(message_len, 0)
    token_len, = struct.unpack(">i", body[at:at + 4])
    auth_bytes = body[at + 4:at + 4 + token_len]
    lifetime, = struct.unpack(">q", body[at + 4 + token_len:at + 12 + token_len])
    return error, auth_bytes, lifetime


def scram_final(password, client_first_bare, server_first):
    fields = dict(f.split("=", 1) for f in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message,
                         hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def connect(broker, listener="SASL_PLAINTEXT"):
    host, port = broker.listeners[listener].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def scram_login(sock, user, password, nonce="c1i3ntn0nce"):
    """A whole SCRAM-SHA-256 login: the client-final message sent and the final answer."""
    assert handshake(sock, "SCRAM-SHA-256") == 0
    bare = f"n={user},r={nonce}"
    error, server_first, _ = authenticate(sock, f"n,,{bare}".encode(), 2)
    assert error == 0
    final = scram_final(password, bare, server_first.decode())
    return final, authenticate(sock, final, 3)


def test_a_replayed_or_tampered_scram_message_does_not_log_in(sasl_broker):
    with connect(sasl_broker) as sock:
        recorded, answer = scram_login(sock, "carol", "carol-secret")
        error, server_final, lifetime = answer
        assert error == 0 and server_final.startswith(b"v=")
        assert lifetime == 3000
    # The same client-final message in a new exchange (same client nonce, a new server
    # nonce): refused, and the connection closes.
    with connect(sasl_broker) as sock:
        assert handshake(sock, "SCRAM-SHA-256") == 0
        error, _, _ = authenticate(sock, b"n,,n=carol,r=c1i3ntn0nce", 2)
        assert error == 0
        error, _, _ = authenticate(sock, recorded, 3)
        assert error == 58  # SASL_AUTHENTICATION_FAILED
        assert receive(sock) == b""
    # A flipped bit in the proof.
    with connect(sasl_broker) as sock:
        assert handshake(sock, "SCRAM-SHA-256") == 0
        bare = "n=carol,r=other"
        _, server_first, _ = authenticate(sock, f"n,,{bare}".encode(), 2)
        final = scram_final("carol-secret", bare, server_first.decode())
        head, proof = final.rsplit(b",p=", 1)
        proof = bytearray(base64.b64decode(proof))
        proof[0] ^= 1
        error, _, _ = authenticate(sock, head + b",p=" + base64.b64encode(bytes(proof)), 3)
        assert error == 58
    # A mechanism the listener does not serve: UNSUPPORTED_SASL_MECHANISM, then closed.
    with connect(sasl_broker) as sock:
        assert handshake(sock, "PLAIN") == 33
        assert receive(sock) == b""


def test_nothing_but_login_is_read_before_authentication(sasl_broker, pki):
    from confluent_kafka.admin import AdminClient

    # A Metadata request before login: closed without an answer.
    with connect(sasl_broker) as sock:
        sock.sendall(frame(3, 12, 1, b"\x01\x00\x00"))
        assert receive(sock) == b""
    # A frame announcing 10 MB before login: closed before it is read.
    with connect(sasl_broker) as sock:
        sock.sendall(struct.pack(">i", 10 * 1024 * 1024) + struct.pack(">hhi", 17, 1, 1))
        started = time.time()
        assert receive(sock) == b""
        assert time.time() - started < 5
    # The same over TLS, on the SASL_SSL listener.
    context = ssl.create_default_context(cafile=pki["ca"])
    with connect(sasl_broker, "SASL_SSL") as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(frame(0, 9, 1, b"\x00" * 16))
            assert receive(sock) == b""
    # ApiVersions is answered before login, and the broker serves others throughout.
    with connect(sasl_broker) as sock:
        sock.sendall(frame(18, 0, 7, b""))
        assert struct.unpack(">h", receive(sock)[:2])[0] == 0
    admin = AdminClient(sasl_ssl(sasl_broker, pki, "SCRAM-SHA-512", "alice", "alice-secret"))
    assert len(admin.list_topics(timeout=10).brokers) == 1


def test_sessions_end_unless_the_client_logs_in_again(sasl_broker):
    # A client that does not re-authenticate is disconnected at its first request after
    # connections.max.reauth.ms (3 s on this listener).
    with connect(sasl_broker) as sock:
        _, (error, _, lifetime) = scram_login(sock, "carol", "carol-secret")
        assert (error, lifetime) == (0, 3000)
        sock.sendall(frame(18, 0, 4, b""))
        assert struct.unpack(">h", receive(sock)[:2])[0] == 0
        time.sleep(3.5)
        sock.sendall(frame(18, 0, 5, b""))
        assert receive(sock) == b""
    # One that logs in again on the same connection goes on.
    with connect(sasl_broker) as sock:
        _, (error, _, _) = scram_login(sock, "carol", "carol-secret")
        assert error == 0
        time.sleep(2)
        _, (error, _, lifetime) = scram_login(sock, "carol", "carol-secret", nonce="again")
        assert (error, lifetime) == (0, 3000)
        time.sleep(2)
        sock.sendall(frame(18, 0, 6, b""))
        assert struct.unpack(">h", receive(sock)[:2])[0] == 0
        # Logging in again as somebody else is refused.
        _, answer = scram_login(sock, "alice", "alice-secret", nonce="third")
        assert answer[0] == 58


def test_librdkafka_keeps_producing_across_session_ends(sasl_broker):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": sasl_broker.listeners["SASL_PLAINTEXT"],
                         "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "carol",
                         "sasl.password": "carol-secret", "acks": "all"})
    delivered = []
    # Eight seconds of records: the 3 s sessions end twice on the way.
    for i in range(32):
        producer.produce("reauth", value=str(i),
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
        producer.poll(0)
        time.sleep(0.25)
    assert producer.flush(30) == 0
    assert [err for err, _ in delivered] == [None] * 32
    assert [offset for _, offset in delivered] == list(range(32))


def test_the_legacy_unframed_exchange_after_a_version_0_handshake(sasl_broker):
    # SaslHandshake v0, then SCRAM tokens as bare size-prefixed frames (before KIP-152).
    def raw(sock, token):
        sock.sendall(struct.pack(">i", len(token)) + token)
        size = sock.recv(4)
        assert len(size) == 4, "the broker closed the connection"
        length = struct.unpack(">i", size)[0]
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        return data

    with connect(sasl_broker) as sock:
        body = struct.pack(">h", 13) + b"SCRAM-SHA-256"
        sock.sendall(frame(17, 0, 1, body))
        assert struct.unpack(">h", receive(sock)[:2])[0] == 0
        bare = "n=carol,r=legacy"
        server_first = raw(sock, f"n,,{bare}".encode()).decode()
        assert server_first.startswith("r=legacy")
        assert raw(sock, scram_final("carol-secret", bare, server_first)).startswith(b"v=")
        # Logged in: ordinary requests are served.
        sock.sendall(frame(18, 0, 9, b""))
        assert struct.unpack(">h", receive(sock)[:2])[0] == 0


def test_the_cli_logs_in_with_scram_and_plain(sasl_broker, pki):
    def spool(listener, protocol, mechanism, user, password, *args, stdin=None):
        return subprocess.run(
            [SPOOL, "--brokers", sasl_broker.listeners[listener], "--security-protocol", protocol,
             "--ssl-ca-location", pki["ca"], "--sasl-mechanism", mechanism,
             "--sasl-username", user, *args],
            input=stdin, capture_output=True, text=True, timeout=60,
            env=dict(os.environ, SPOOL_SASL_PASSWORD=password))

    made = spool("SASL_SSL", "SASL_SSL", "SCRAM-SHA-512", "alice", "alice-secret",
                 "topic", "create", "cli-sasl", "-p", "1")
    assert made.returncode == 0, made.stderr
    sent = spool("SASL_SSL", "SASL_SSL", "PLAIN", "bob", "bob-secret", "produce", "cli-sasl",
                 stdin="a\nb\nc\n")
    assert sent.returncode == 0, sent.stderr
    read = spool("SASL_PLAINTEXT", "SASL_PLAINTEXT", "SCRAM-SHA-256", "carol", "carol-secret",
                 "consume", "cli-sasl", "--format", "%o %v\\n")
    assert read.returncode == 0 and read.stdout.splitlines() == ["0 a", "1 b", "2 c"], read.stderr

    # A wrong password, and a mechanism the listener does not offer, are the broker's
    # errors, named.
    wrong = spool("SASL_SSL", "SASL_SSL", "SCRAM-SHA-256", "alice", "nope", "topic", "list")
    assert wrong.returncode == 1 and "SASL_AUTHENTICATION_FAILED" in wrong.stderr, wrong.stderr
    unoffered = spool("SASL_PLAINTEXT", "SASL_PLAINTEXT", "PLAIN", "bob", "bob-secret",
                      "topic", "list")
    assert unoffered.returncode == 1, unoffered.stderr
    assert "UNSUPPORTED_SASL_MECHANISM" in unoffered.stderr, unoffered.stderr
    missing = subprocess.run([SPOOL, "--brokers", sasl_broker.listeners["SASL_SSL"],
                              "--security-protocol", "SASL_SSL", "topic", "list"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "--sasl-mechanism" in missing.stderr, missing.stderr
