"""A transactional client the transaction tests run as a separate process, so that it (or
the broker under it) can be killed at any moment.

  txn_worker.py chaos BOOTSTRAP TOPIC STOP_FILE
      Runs numbered transactions of 6 records ("N:i" to partition i % 3) until STOP_FILE
      exists: every third one is aborted, the others committed. Prints "committed N" or
      "aborted N" once the client confirmed the end, "failed N" when the outcome is unknown
      (the broker died under it); after a failure it starts again with a new producer,
      whose initialisation fences the old one and aborts what it left open.

  txn_worker.py copy BOOTSTRAP INPUT OUTPUT GROUP
      Copies INPUT to OUTPUT (same partition) in transactions of up to 500 records that
      also commit the group's offsets, until it has read everything for 5 seconds.
      Prints "copied N" after each commit.
"""
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer


def log(*words):
    print(*words, flush=True)


def transactional_producer(bootstrap, txn_id, timeout_ms=5000):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms,
    })
    while True:
        try:
            producer.init_transactions(10)
            return producer
        except KafkaException as e:
            if not e.args[0].retriable():
                raise
            time.sleep(0.2)


def chaos(bootstrap, topic, stop_file):
    producer = None
    n = 0
    while not os.path.exists(stop_file):
        try:
            if producer is None:
                producer = transactional_producer(bootstrap, "chaos")
            producer.begin_transaction()
            for i in range(6):
                producer.produce(topic, value=f"{n}:{i}".encode(), partition=i % 3)
            if n % 3 == 2:
                producer.flush(10)
                producer.abort_transaction(10)
                log("aborted", n)
            else:
                producer.commit_transaction(10)
                log("committed", n)
        except KafkaException as e:
            log("failed", n, str(e.args[0]).replace("\n", " "))
            producer = None
            time.sleep(0.2)
        n += 1


def copy(bootstrap, source, target, group):
    producer = transactional_producer(bootstrap, f"copier-{group}", timeout_ms=10000)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # A restarted copier takes its predecessor's place at once.
        "group.instance.id": f"copier-{group}",
        "session.timeout.ms": 6000,
    })
    consumer.subscribe([source])
    idle_since = time.time()
    while time.time() - idle_since < 5:
        batch = [m for m in consumer.consume(num_messages=500, timeout=1) if not m.error()]
        if not batch:
            continue
        idle_since = time.time()
        producer.begin_transaction()
        for message in batch:
            producer.produce(target, value=message.value(), partition=message.partition())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 10)
        producer.commit_transaction(10)
        log("copied", len(batch))
    consumer.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "chaos":
        chaos(*args)
    elif mode == "copy":
        copy(*args)
    else:
        sys.exit(f"unknown mode {mode}")
