"""ACLs with real clients: administration (CreateAcls, DescribeAcls, DeleteAcls) and every
request checked against the bindings, as SASL users and as certificate principals. Without
an authorizer the ACL APIs answer SECURITY_DISABLED, as Kafka does."""
import shutil
import time
import uuid

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, NewTopic,
                                   ResourcePatternType, ResourceType)

from conftest import Broker

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def test_acl_apis_answer_security_disabled_without_an_authorizer(broker):
    admin = AdminClient({"bootstrap.servers": broker.address})
    binding = AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL,
                         "User:alice", "*", AclOperation.WRITE, AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as created:
        admin.create_acls([binding])[binding].result(timeout=30)
    assert created.value.args[0].name() == "SECURITY_DISABLED"
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    with pytest.raises(KafkaException) as deleted:
        admin.delete_acls([everything])[everything].result(timeout=30)
    assert deleted.value.args[0].name() == "SECURITY_DISABLED"
    # librdkafka's DescribeAcls drops the response's error; kafka-python raises it.
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, KafkaAdminClient, ResourcePatternFilter)
    from kafka.admin import ResourceType as KafkaPythonResourceType
    from kafka.errors import SecurityDisabledError
    kafka_python = KafkaAdminClient(bootstrap_servers=broker.address)
    with pytest.raises(SecurityDisabledError):
        kafka_python.describe_acls(ACLFilter(
            principal=None, host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(KafkaPythonResourceType.ANY, None,
                                                   ACLResourcePatternType.ANY)))
    kafka_python.close()


@pytest.fixture(scope="module")
def secured(pki):
    """An authorizer with User:admin as super user. SASL_PLAINTEXT logs in admin, alice and
    bob with PLAIN; SSL requires client certificates, whose subjects become principals
    through a mapping rule (CN=dave,OU=ops,... is User:dave) or as they are (DEFAULT)."""
    b = Broker("listeners=PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0,"
               "SSL://127.0.0.1:0",
               "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,"
               "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL",
               f"authorizer.class.name={AUTHORIZER}",
               "super.users=User:admin",
               "sasl.enabled.mechanisms=PLAIN",
               "listener.name.sasl_plaintext.plain.sasl.jaas.config="
               "org.apache.kafka.common.security.plain.PlainLoginModule required "
               'user_admin="admin-secret" user_alice="alice-secret" user_bob="bob-secret";',
               f"ssl.keystore.location={pki['keystore']}",
               f"ssl.truststore.location={pki['ca']}",
               "ssl.client.auth=required",
               "ssl.principal.mapping.rules=RULE:^O=Spool,OU=ops,CN=([a-z]+)$/$1/L,DEFAULT",
               "num.partitions=1")
    yield b
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def as_user(broker, user):
    return {"bootstrap.servers": broker.listeners["SASL_PLAINTEXT"],
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": user, "sasl.password": f"{user}-secret"}


def as_certificate(broker, pki, name):
    return {"bootstrap.servers": broker.listeners["SSL"], "security.protocol": "SSL",
            "ssl.ca.location": pki["ca"], "ssl.key.location": pki[f"{name}_key"],
            "ssl.certificate.location": pki[f"{name}_cert"]}


def create_topics(broker, *names):
    admin = AdminClient(as_user(broker, "admin"))
    futures = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1)
                                   for n in names])
    for future in futures.values():
        future.result(timeout=30)


def grant(broker, *bindings):
    admin = AdminClient(as_user(broker, "admin"))
    for binding, future in admin.create_acls(list(bindings)).items():
        future.result(timeout=30)


def allow(resource, name, principal, operation, pattern=ResourcePatternType.LITERAL,
          permission=AclPermissionType.ALLOW):
    return AclBinding(resource, name, pattern, principal, "*", operation, permission)


def produce(config, topic, value, **extra):
    """Produces one record: (error name or None, offset)."""
    producer = Producer({**config, "message.timeout.ms": 10000, **extra})
    outcome = []
    producer.produce(topic, value=value,
                     on_delivery=lambda err, msg: outcome.append((err, msg.offset())))
    producer.flush(30)
    assert outcome, "the delivery report did not come"
    err, offset = outcome[0]
    return (err.name() if err else None), offset


def consume(config, topic, group, count):
    """Subscribes in `group`: (values read, error names seen)."""
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values, errors = [], []
    deadline = time.time() + 20
    while len(values) < count and not errors and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            errors.append(msg.error().name())
        else:
            values.append(msg.value().decode())
    consumer.close()
    return values, errors


def test_a_principal_without_acls_gets_the_precise_error(secured):
    create_topics(secured, "ledger")
    alice = as_user(secured, "alice")
    # Nothing grants alice anything: the topic is hidden and refused.
    assert "ledger" not in AdminClient(alice).list_topics(timeout=10).topics
    assert "ledger" in AdminClient(as_user(secured, "admin")).list_topics(timeout=10).topics
    assert produce(alice, "ledger", "x")[0] == "TOPIC_AUTHORIZATION_FAILED"
    # Reading the topic is allowed, joining the group is not.
    grant(secured, allow(ResourceType.TOPIC, "ledger", "User:alice", AclOperation.READ))
    assert consume(alice, "ledger", "ledger-readers", 1) == ([], ["GROUP_AUTHORIZATION_FAILED"])
    # Connections nobody authenticated are ANONYMOUS, and just as refused.
    anonymous = {"bootstrap.servers": secured.listeners["PLAINTEXT"]}
    assert produce(anonymous, "ledger", "x")[0] == "TOPIC_AUTHORIZATION_FAILED"
    # The ACL APIs need ALTER (or DESCRIBE) on the cluster.
    binding = allow(ResourceType.TOPIC, "ledger", "User:alice", AclOperation.WRITE)
    alice_admin = AdminClient(alice)
    with pytest.raises(KafkaException) as refused:
        alice_admin.create_acls([binding])[binding].result(timeout=30)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_prefixed_acls_grant_and_deny_overrides_allow(secured):
    create_topics(secured, "orders-eu", "orders-secret")
    alice = as_user(secured, "alice")
    grant(secured,
          allow(ResourceType.TOPIC, "orders-", "User:alice", AclOperation.WRITE,
                ResourcePatternType.PREFIXED),
          allow(ResourceType.TOPIC, "orders-", "User:alice", AclOperation.READ,
                ResourcePatternType.PREFIXED),
          allow(ResourceType.GROUP, "alice-", "User:alice", AclOperation.READ,
                ResourcePatternType.PREFIXED),
          allow(ResourceType.TOPIC, "orders-secret", "User:alice", AclOperation.WRITE,
                permission=AclPermissionType.DENY))
    assert produce(alice, "orders-eu", "first") == (None, 0)
    assert produce(alice, "orders-secret", "hidden")[0] == "TOPIC_AUTHORIZATION_FAILED"
    # The DENY names WRITE only: READ (which implies DESCRIBE) still comes from the prefix.
    topics = AdminClient(alice).list_topics(timeout=10).topics
    assert {"orders-eu", "orders-secret"} <= set(topics)
    assert consume(alice, "orders-eu", "alice-readers", 1) == (["first"], [])
    # Bob has no bindings: the prefixed ones are alice's.
    assert produce(as_user(secured, "bob"), "orders-eu", "x")[0] == "TOPIC_AUTHORIZATION_FAILED"
    # The bindings are listed as created.
    admin = AdminClient(as_user(secured, "admin"))
    listed = admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, "orders-", ResourcePatternType.PREFIXED, "User:alice", None,
        AclOperation.ANY, AclPermissionType.ANY)).result(timeout=30)
    assert sorted(b.operation.name for b in listed) == ["READ", "WRITE"]


def test_super_users_need_no_acls(secured):
    admin = as_user(secured, "admin")
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    create_topics(secured, topic)
    assert produce(admin, topic, "by-admin") == (None, 0)
    assert consume(admin, topic, "admin-readers", 1) == (["by-admin"], [])


def test_certificate_subjects_are_principals(secured, pki):
    create_topics(secured, "telemetry")
    dave = as_certificate(secured, pki, "dave")
    alice_cert = as_certificate(secured, pki, "client")
    # The mapping rule makes CN=dave,OU=ops,O=Spool User:dave; alice's subject stays whole.
    grant(secured, allow(ResourceType.TOPIC, "telemetry", "User:dave", AclOperation.WRITE))
    assert produce(dave, "telemetry", "from-dave") == (None, 0)
    assert produce(alice_cert, "telemetry", "x")[0] == "TOPIC_AUTHORIZATION_FAILED"
    grant(secured, allow(ResourceType.TOPIC, "telemetry", "User:CN=alice", AclOperation.WRITE))
    assert produce(alice_cert, "telemetry", "from-alice") == (None, 1)


def test_transactional_ids_and_idempotence_are_checked(secured):
    create_topics(secured, "payments")
    alice = as_user(secured, "alice")
    grant(secured, allow(ResourceType.TOPIC, "payments", "User:alice", AclOperation.WRITE))
    # WRITE on a topic is enough for an idempotent producer (no IDEMPOTENT_WRITE needed).
    assert produce(alice, "payments", "once", **{"enable.idempotence": True}) == (None, 0)
    # A transactional ID needs its own WRITE binding.
    producer = Producer({**alice, "transactional.id": "payments-tx"})
    with pytest.raises(KafkaException) as refused:
        producer.init_transactions(30)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    grant(secured, allow(ResourceType.TRANSACTIONAL_ID, "payments-tx", "User:alice",
                         AclOperation.WRITE))
    producer = Producer({**alice, "transactional.id": "payments-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce("payments", value="in-a-transaction")
    producer.commit_transaction(30)
    # What alice wrote is there, read as admin.
    consumer = Consumer({**as_user(secured, "admin"), "group.id": "payments-audit",
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition("payments", 0, 0)])
    values = []
    deadline = time.time() + 20
    while len(values) < 2 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    assert values == ["once", "in-a-transaction"]
