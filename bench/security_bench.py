"""What TLS and SASL cost: produce and consume MB/s over PLAINTEXT and over SASL_SSL
(SCRAM-SHA-512) on one broker, and full TLS handshakes per second, with confluent-kafka
(librdkafka) on this machine. Prints one line per figure.

    cargo build --release -p spool
    build/venv/bin/python bench/security_bench.py [--mb 512] [--spool target/release/spool]

1 KiB messages, a topic of 6 partitions per run, acks=1. Certificates are made with
openssl for the run. Every loop is bounded in count and time.
"""
import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

from client_bench import MESSAGE, PARTITIONS, consume, produce


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificates(directory):
    """A CA and the broker's key and certificate in one PEM file: (CA file, keystore)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench CA",
            cwd=directory)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost", cwd=directory)
    with open(os.path.join(directory, "broker.ext"), "w") as ext:
        ext.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", "broker.crt", "-extfile", "broker.ext",
            cwd=directory)
    keystore = os.path.join(directory, "broker.pem")
    with open(keystore, "w") as out:
        for part in ("broker.key", "broker.crt"):
            with open(os.path.join(directory, part)) as f:
                out.write(f.read())
    return os.path.join(directory, "ca.pem"), keystore


def start(spool, data_dir, keystore):
    process = subprocess.Popen(
        [spool, "server", "--admin-listen", "127.0.0.1:0", "--data-dir", data_dir,
         "--set", "listeners=PLAINTEXT://127.0.0.1:0,SASL_SSL://127.0.0.1:0,SSL://127.0.0.1:0",
         "--set", "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
         "--set", f"ssl.keystore.location={keystore}",
         "--set", "sasl.enabled.mechanisms=SCRAM-SHA-512"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    listeners, deadline = {}, time.time() + 30
    while time.time() < deadline:
        line = process.stdout.readline()
        if line.startswith("spool: Kafka listener "):
            # "spool: Kafka listener [NAME] on ADDRESS" (no name: PLAINTEXT).
            words = line.split()
            listeners[words[3] if len(words) == 6 else "PLAINTEXT"] = words[-1]
        elif line.startswith("spool: data in ") or not line:
            break
    if not {"PLAINTEXT", "SASL_SSL", "SSL"} <= set(listeners):
        process.kill()
        process.wait(timeout=30)
        raise RuntimeError(f"the broker did not report its listeners: {listeners}")
    return process, listeners


def handshakes(address, ca, seconds, threads=2):
    """Full TLS handshakes per second (no session resumption), from `threads` clients."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)
    context.options |= ssl.OP_NO_TICKET
    counts = [0] * threads
    stop = time.time() + seconds

    def run(slot):
        while time.time() < stop:
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost"):
                    counts[slot] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    return sum(counts) / (time.time() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--spool", default="target/release/spool")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="spool-bench-security-")
    try:
        ca, keystore = certificates(directory)
        process, listeners = start(args.spool, os.path.join(directory, "data"), keystore)
        try:
            plain = {"bootstrap.servers": listeners["PLAINTEXT"]}
            admin = AdminClient(plain)
            user = UserScramCredentialUpsertion(
                "bench", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"bench-secret")
            for future in admin.alter_user_scram_credentials([user]).values():
                future.result(30)
            secured = {"bootstrap.servers": listeners["SASL_SSL"], "security.protocol": "SASL_SSL",
                       "ssl.ca.location": ca, "sasl.mechanism": "SCRAM-SHA-512",
                       "sasl.username": "bench", "sasl.password": "bench-secret"}
            count = args.mb * 1024
            figures = {}
            for name, config in [("PLAINTEXT", plain), ("SASL_SSL", secured)]:
                topic = f"bench-{name.lower()}"
                admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
                address = config["bootstrap.servers"]
                extra = {k: v for k, v in config.items() if k != "bootstrap.servers"}
                produced = produce(address, topic, count, "1", **extra)
                consumed = consume(address, topic, count * len(MESSAGE), **extra)
                figures[name] = (produced, consumed)
                print(f"{name}: produce {produced:.0f} MB/s, consume {consumed:.0f} MB/s "
                      f"({args.mb} MB, 1 KiB messages, {PARTITIONS} partitions, acks=1)")
            (p0, c0), (p1, c1) = figures["PLAINTEXT"], figures["SASL_SSL"]
            print(f"SASL_SSL cost: produce {100 * (1 - p1 / p0):.0f}%, "
                  f"consume {100 * (1 - c1 / c0):.0f}% of PLAINTEXT throughput")
            rate = handshakes(listeners["SSL"], ca, 10)
            print(f"TLS handshakes: {rate:.0f}/s (full handshakes, 2 client threads, 10 s)")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
