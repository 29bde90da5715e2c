"""Starts the real spool binary for the interop tests."""
import os
import shutil
import signal
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
        args = [SPOOL, "server", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir]
        for setting in self.settings:
            args += ["--set", setting]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 30
        self.address = None
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("spool: Kafka listener on "):
                self.address = line.split()[-1]
                break
        assert self.address, "spool did not report its listener"

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0

    def restart(self):
        """A graceful stop and a start on the same data directory (a new port)."""
        self.stop()
        self.start()


@pytest.fixture
def broker():
    b = Broker("num.partitions=3")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)
