"""Starts the real spool binary for the interop tests."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

SPOOL = os.environ.get("SPOOL_BIN", "target/debug/spool")


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
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("spool: Kafka listener "):
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
