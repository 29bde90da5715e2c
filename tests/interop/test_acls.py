"""ACL administration with real clients. No authorizer can be configured in this version,
so the ACL APIs answer as Kafka does without one."""
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, ResourcePatternType,
                                   ResourceType)


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
