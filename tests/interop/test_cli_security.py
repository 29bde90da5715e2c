"""`spool acl`, `spool user` and `spool quota` against a broker with an authorizer and
SCRAM logins, cross-checked with real clients: a confluent-kafka producer logs in as the
user the CLI created and is allowed or refused as the CLI's ACLs say; confluent-kafka's
admin client sees the same ACLs and credentials; kafka-python's DescribeClientQuotas sees
the CLI's quotas."""
import shutil
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType, ScramMechanism)
from kafka.admin import KafkaAdminClient

from conftest import Broker
from test_acls import AUTHORIZER, produce
from test_cli import spool, spool_json
from test_quotas import describe


@pytest.fixture(scope="module")
def secured():
    """PLAINTEXT logs in as User:ANONYMOUS, a super user here (the CLI's seat);
    SASL_PLAINTEXT takes SCRAM logins."""
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0",
               "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
               f"authorizer.class.name={AUTHORIZER}",
               "super.users=User:ANONYMOUS",
               "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
               "num.partitions=1")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def as_alice(broker, mechanism="SCRAM-SHA-512", password="alice-secret"):
    return {"bootstrap.servers": broker.listeners["SASL_PLAINTEXT"],
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": "alice", "sasl.password": password}


def logs_in(config):
    errors = []
    admin = AdminClient({**config, "error_cb": errors.append})
    try:
        admin.list_topics(timeout=5)
        return True
    except KafkaException:
        deadline = time.time() + 10
        while not errors and time.time() < deadline:
            admin.poll(0.2)
        assert errors and errors[0].name() == "_AUTHENTICATION", errors
        return False


def test_users_and_acls_made_with_the_cli_decide_what_a_scram_client_may_do(secured):
    spool(secured, "user", "create", "alice", "--password", "alice-secret")
    made = spool(secured, "user", "create", "alice", "--mechanism", "scram-sha-512", "--iterations", "8192",
                 input="alice-secret\n")
    assert made.stdout == "user alice has a SCRAM-SHA-512 credential\n"
    assert spool_json(secured, "user", "list") == [{"user": "alice", "credentials": [
        {"mechanism": "SCRAM-SHA-256", "iterations": 4096}, {"mechanism": "SCRAM-SHA-512", "iterations": 8192}]}]
    rd_admin = AdminClient({"bootstrap.servers": secured.address})
    infos = rd_admin.describe_user_scram_credentials(["alice"])["alice"].result(timeout=30).scram_credential_infos
    assert sorted((i.mechanism, i.iterations) for i in infos) == [
        (ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 8192)]
    too_few = spool(secured, "user", "create", "bob", "--password", "x", "--iterations", "100", check=False)
    assert too_few.returncode == 1 and "user bob: UNACCEPTABLE_CREDENTIAL" in too_few.stderr, too_few.stderr

    # Both credentials log in; with no ACL the write is refused.
    spool(secured, "topic", "create", "payments")
    assert logs_in(as_alice(secured, "SCRAM-SHA-256"))
    assert produce(as_alice(secured), "payments", b"p0")[0] == "TOPIC_AUTHORIZATION_FAILED"

    granted = spool(secured, "acl", "create", "--allow", "User:alice", "-o", "write", "-o", "describe",
                    "--topic", "pay", "--pattern", "prefixed").stdout
    assert granted.startswith("created 2 ACLs\n") and "User:alice" in granted
    assert produce(as_alice(secured), "payments", b"p1") == (None, 0)
    listed = spool_json(secured, "acl", "list")
    assert listed == [
        {"principal": "User:alice", "host": "*", "permission": "ALLOW", "operation": op,
         "resource_type": "TOPIC", "resource_name": "pay", "pattern_type": "PREFIXED"}
        for op in ["WRITE", "DESCRIBE"]]
    seen = rd_admin.describe_acls(AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(timeout=30)
    assert sorted((b.principal, b.operation, b.name, b.resource_pattern_type) for b in seen) == [
        ("User:alice", AclOperation.WRITE, "pay", ResourcePatternType.PREFIXED),
        ("User:alice", AclOperation.DESCRIBE, "pay", ResourcePatternType.PREFIXED)]
    # Filters: by principal, and `match` (what applies to a topic name).
    assert spool_json(secured, "acl", "list", "--principal", "User:bob") == []
    assert len(spool_json(secured, "acl", "list", "--topic", "payments", "--pattern", "match")) == 2
    assert spool_json(secured, "acl", "list", "--topic", "payments") == []

    # A deny wins over the allow; deleting it lets alice write again.
    spool(secured, "acl", "create", "--deny", "User:alice", "-o", "write", "--topic", "payments")
    assert produce(as_alice(secured), "payments", b"p2")[0] == "TOPIC_AUTHORIZATION_FAILED"
    table = spool(secured, "acl", "list", "--permission", "deny").stdout
    assert table.splitlines()[1].split() == ["User:alice", "*", "DENY", "WRITE", "TOPIC", "payments", "LITERAL"]
    deleted = spool_json(secured, "acl", "delete", "--principal", "User:alice", "--permission", "deny")
    assert [(b["permission"], b["resource_name"]) for b in deleted["deleted"]] == [("DENY", "payments")]
    assert produce(as_alice(secured), "payments", b"p3") == (None, 1)

    everything = spool(secured, "acl", "delete", check=False)
    assert everything.returncode == 1 and "--all" in everything.stderr
    assert len(spool_json(secured, "acl", "list")) == 2
    bad = spool(secured, "acl", "create", "--allow", "alice", "-o", "read", "--topic", "t", check=False)
    assert bad.returncode == 1 and "TYPE:NAME" in bad.stderr

    # Deleting the user ends its logins.
    assert spool(secured, "user", "delete", "alice").stdout == "deleted user alice (SCRAM-SHA-256, SCRAM-SHA-512)\n"
    assert spool_json(secured, "user", "list") == []
    assert not logs_in(as_alice(secured))


def test_acl_commands_report_security_disabled_without_an_authorizer(broker):
    result = spool(broker, "acl", "list", check=False)
    assert result.returncode == 1 and "SECURITY_DISABLED" in result.stderr, result.stderr


def test_quota_commands_set_describe_and_remove_quotas(broker):
    spool(broker, "quota", "alter", "--user", "alice", "--client", "app",
          "--set", "producer_byte_rate=1024", "--set", "consumer_byte_rate=2048")
    spool(broker, "quota", "alter", "--default-user", "--set", "request_percentage=50")
    listed = spool_json(broker, "quota", "describe")
    assert {"entity": {"user": "alice", "client-id": "app"},
            "quotas": {"producer_byte_rate": 1024.0, "consumer_byte_rate": 2048.0}} in listed
    assert {"entity": {"user": None}, "quotas": {"request_percentage": 50.0}} in listed
    admin = KafkaAdminClient(bootstrap_servers=broker.address)
    try:
        assert describe(admin, [("user", 0, "alice")])[(("client-id", "app"), ("user", "alice"))] == {
            "producer_byte_rate": 1024.0, "consumer_byte_rate": 2048.0}
        spool(broker, "quota", "alter", "--user", "alice", "--client", "app", "--remove", "consumer_byte_rate")
        assert describe(admin, [("user", 0, "alice")])[(("client-id", "app"), ("user", "alice"))] == {
            "producer_byte_rate": 1024.0}
    finally:
        admin.close()
    assert spool_json(broker, "quota", "describe", "--default-user") == [
        {"entity": {"user": None}, "quotas": {"request_percentage": 50.0}}]
    table = spool(broker, "quota", "describe", "--user", "alice").stdout
    assert "user=alice,client-id=app  producer_byte_rate  1024" in table or "client-id=app,user=alice" in table, table
    bad = spool(broker, "quota", "alter", "--user", "alice", "--set", "fastness=3", check=False)
    assert bad.returncode == 1 and "INVALID_REQUEST" in bad.stderr, bad.stderr
