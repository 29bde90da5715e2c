"""The Kubernetes manifest's start-up script, run outside Kubernetes: with the pod's
environment it starts a node whose ID comes from the pod name and which advertises the
listener the script names. Only the quorum is cut to this one node (the pods' DNS names
do not resolve here) and the ports moved to free ones."""
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request

import yaml
from confluent_kafka.admin import AdminClient

from conftest import SPOOL
from test_cluster import ADMIN_OFFSET, CONTROLLER_OFFSET, free_block, wait_serving

MANIFEST = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "kubernetes",
                        "spool.yaml")


def test_the_kubernetes_manifest_starts_a_node_named_after_its_pod():
    docs = list(yaml.safe_load_all(open(MANIFEST)))
    kinds = {d["kind"]: d for d in docs}
    assert {"Service", "StatefulSet", "PodDisruptionBudget"} <= set(kinds)
    sts = kinds["StatefulSet"]["spec"]
    assert sts["replicas"] == 3 and sts["podManagementPolicy"] == "Parallel"
    script = sts["template"]["spec"]["containers"][0]["args"][0]
    assert "0@spool-0.${domain}:9093,1@spool-1.${domain}:9093,2@spool-2.${domain}:9093" in script

    base = free_block(2)
    port, controller, admin = base + 1, base + CONTROLLER_OFFSET + 1, base + ADMIN_OFFSET + 1
    data = tempfile.mkdtemp(prefix="spool-interop-deploy-")
    script = (script.replace("/usr/local/bin/spool", SPOOL)
              .replace("/var/lib/spool", data)
              .replace('voters="0@spool-0.${domain}:9093,1@spool-1.${domain}:9093,'
                       '2@spool-2.${domain}:9093"', f'voters="1@127.0.0.1:{controller}"')
              .replace("${POD_NAME}.${domain}:9092", f"localhost:{port}")
              .replace(":9092", f":{port}").replace(":9093", f":{controller}")
              .replace(":9644", f":{admin}"))
    env = dict(os.environ, POD_NAME="spool-1", NAMESPACE="streaming")
    process = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        wait_serving(process, "the pod's node")
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert {b.id: (b.host, b.port) for b in metadata.brokers.values()} == {
            1: ("localhost", port)}
        # The probes the manifest names answer on the admin port.
        container = sts["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        for path in ("/ready", "/health"):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as r:
                assert r.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)
