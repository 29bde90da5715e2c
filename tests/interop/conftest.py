"""Starts the real spool binary for the interop tests."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

SPOOL = os.environ.get("SPOOL_BIN", "target/debug/spool")
# Every broker a test starts (several at once in cluster tests) serves its admin API on a
# free port rather than 9644, unless the test says otherwise.
os.environ.setdefault("SPOOL_ADMIN_LISTEN", "127.0.0.1:0")


class Broker:
    def __init__(self, *settings):
        self.data_dir = tempfile.mkdtemp(prefix="spool-interop-")
        self.settings = settings
        self.start()

    def start(self):
        args = [SPOOL, "server", "--data-dir", self.data_dir]
        if not any(s.startswith("listeners=") for s in self.settings):
            args += ["--listen", "127.0.0.1:0"]
        for setting in self.settings:
            args += ["--set", setting]
        # SPOOL_INTEROP_LOG=FILE keeps the broker's log (set SPOOL_LOG for its level).
        log = os.environ.get("SPOOL_INTEROP_LOG")
        stderr = open(log, "a") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.time() + 30
        # "spool: Kafka listener [NAME] on ADDRESS" per listener (no name: PLAINTEXT), then
        # "spool: data in DIR".
        self.listeners = {}
        self.admin = None
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("spool: admin API on "):
                self.admin = line.split()[-1]
            elif line.startswith("spool: Kafka listener "):
                words = line.split()
                self.listeners[words[3] if len(words) == 6 else "PLAINTEXT"] = words[-1]
            elif line.startswith("spool: data in ") or not line:
                break
        self.address = self.listeners.get("PLAINTEXT")
        assert self.listeners, "spool did not report its listeners"

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0

    def restart(self):
        """A graceful stop and a start on the same data directory (a new port)."""
        self.stop()
        self.start()


def scrape(admin):
    """The samples of the broker's /metrics at `admin` (http://HOST:PORT), read with the
    Prometheus client library's OpenMetrics parser: {sample name: [(labels, value)]}."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def commit(bootstrap, group, topic, offsets):
    """Commits `offsets` ({partition: offset} of `topic`) for `group` with confluent-kafka,
    without joining the group. A commit refused because the coordinator is not ready yet
    is tried again, as the Java client's commitSync does: a broker that has just created
    `__consumer_offsets` can answer NOT_COORDINATOR for a moment (so can Kafka)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
    coordinator_moving = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                          KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        for attempt in range(20):
            try:
                consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                                asynchronous=False)
                return
            except KafkaException as e:
                if e.args[0].code() not in coordinator_moving or attempt == 19:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def free_port():
    """A port nothing listens on now, for a broker that must come back on the same port
    after a restart (so that running clients reconnect to it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker():
    b = Broker("num.partitions=3")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.fixture
def two_listener_broker():
    """PLAINTEXT advertised as 127.0.0.1, INTERNAL as localhost; both on free ports."""
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,INTERNAL://127.0.0.1:0",
               "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT",
               "advertised.listeners=PLAINTEXT://127.0.0.1:0,INTERNAL://localhost:0")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


# Certificates for the TLS and SASL tests, made with openssl for each run.

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def authority(directory, name):
    """A self-signed CA: `name`.pem and `name`.key."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
            "-subj", f"/CN=Spool test {name}", cwd=directory)


def signed(directory, name, subject, extensions, ca="ca"):
    """A P-256 key and a certificate CA `ca` signed: (key file, certificate file)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    with open(os.path.join(directory, f"{name}.ext"), "w") as ext:
        ext.write(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            cwd=directory)
    return os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.crt")


@pytest.fixture(scope="module")
def pki():
    """A CA, the broker's certificate (for localhost and 127.0.0.1, with its key in one
    PEM keystore file), client certificates for CN=alice and CN=dave,OU=ops,O=Spool, and
    one for CN=mallory that another CA signed."""
    directory = tempfile.mkdtemp(prefix="spool-interop-pki-")
    authority(directory, "ca")
    authority(directory, "rogue")
    key, cert = signed(directory, "broker", "/CN=localhost",
                       "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    keystore = os.path.join(directory, "broker.pem")
    with open(keystore, "w") as out:
        for part in (key, cert):
            with open(part) as f:
                out.write(f.read())
    client_key, client_cert = signed(directory, "alice", "/CN=alice",
                                     "extendedKeyUsage=clientAuth\n")
    rogue_key, rogue_cert = signed(directory, "mallory", "/CN=mallory",
                                   "extendedKeyUsage=clientAuth\n", ca="rogue")
    dave_key, dave_cert = signed(directory, "dave", "/CN=dave/OU=ops/O=Spool",
                                 "extendedKeyUsage=clientAuth\n")
    # The broker's next certificate, from the other CA, for the rotation test.
    next_key, next_cert = signed(directory, "broker-next", "/CN=localhost",
                                 "subjectAltName=DNS:localhost,IP:127.0.0.1\n", ca="rogue")
    next_keystore = os.path.join(directory, "broker-next.pem")
    with open(next_keystore, "w") as out:
        for part in (next_key, next_cert):
            with open(part) as f:
                out.write(f.read())
    yield {"ca": os.path.join(directory, "ca.pem"), "keystore": keystore,
           "client_key": client_key, "client_cert": client_cert,
           "rogue_key": rogue_key, "rogue_cert": rogue_cert,
           "dave_key": dave_key, "dave_cert": dave_cert,
           "rogue_ca": os.path.join(directory, "rogue.pem"), "next_keystore": next_keystore}
    shutil.rmtree(directory, ignore_errors=True)
