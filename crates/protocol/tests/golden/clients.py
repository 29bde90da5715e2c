"""Drives one real Kafka client library against the capture broker.

Usage: clients.py confluent-kafka|kafka-python HOST:PORT

Each run produces with every compression codec, runs a consumer group through join,
sync, offset fetch, fetch and commit, and starts an idempotent producer, so that the
capture broker sees each request kind the golden-frame tests need.
"""
import sys
import time

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
TOPIC = "golden"


def confluent(bootstrap):
    from confluent_kafka import Consumer, Producer, TopicPartition

    client_id = "confluent-kafka"
    for codec in CODECS:
        producer = Producer({"bootstrap.servers": bootstrap, "client.id": client_id,
                             "compression.type": codec, "enable.idempotence": codec == "none",
                             "linger.ms": 5})
        for i in range(20):
            producer.produce(TOPIC, key=f"key-{i}", value=f"value-{i}" * 8, partition=0,
                             headers=[("trace", b"t-%d" % i)])
        if producer.flush(10) != 0:
            raise SystemExit(f"confluent-kafka: {codec} messages not delivered")
    consumer = Consumer({"bootstrap.servers": bootstrap, "client.id": client_id,
                         "group.id": "golden-group", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([TOPIC])
    deadline = time.time() + 10
    while time.time() < deadline and not consumer.assignment():
        consumer.poll(0.2)
    for _ in range(5):
        consumer.poll(0.2)
    consumer.commit(offsets=[TopicPartition(TOPIC, 0, 7)], asynchronous=False)
    consumer.close()


def kafka_python(bootstrap):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    client_id = "kafka-python"
    for codec in CODECS:
        producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id,
                                 compression_type=None if codec == "none" else codec,
                                 enable_idempotence=codec == "none", acks="all", linger_ms=5)
        for i in range(20):
            producer.send(TOPIC, key=b"key-%d" % i, value=b"value-%d" % i * 8, partition=0,
                          headers=[("trace", b"t-%d" % i)])
        producer.flush(10)
        producer.close()
    consumer = KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, client_id=client_id,
                             group_id="golden-group", auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    deadline = time.time() + 10
    while time.time() < deadline and not consumer.assignment():
        consumer.poll(200)
    consumer.poll(200)
    consumer.commit({TopicPartition(TOPIC, 0): OffsetAndMetadata(7, "", -1)})
    consumer.close()


if __name__ == "__main__":
    name, bootstrap = sys.argv[1], sys.argv[2]
    {"confluent-kafka": confluent, "kafka-python": kafka_python}[name](bootstrap)
