"""The replication test's consumer-group member, in its own process.

    python audit_member.py BOOTSTRAP GROUP INSTANCE TOPIC LOG

A confluent-kafka consumer with a static membership (group.instance.id INSTANCE), so that
a member started in place of a killed one takes over its identity and assignment at once.
It prints "KEY PARTITION OFFSET" for each record, flushed, and only then stores that
record's offset for the automatic commit: the group never commits past a record this
process did not print. librdkafka's group and fetch messages are appended to LOG.
It runs until killed, or until its standard input closes (the test process is gone).
"""
import logging
import os
import sys
import threading

from confluent_kafka import Consumer

BOOTSTRAP, GROUP, INSTANCE, TOPIC, LOG = sys.argv[1:6]

logger = logging.getLogger("audit-member")
logger.setLevel(logging.DEBUG)
handler = logging.FileHandler(LOG)
handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
logger.addHandler(handler)
consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": GROUP,
                     "group.instance.id": INSTANCE, "auto.offset.reset": "earliest",
                     "enable.auto.offset.store": False, "debug": "cgrp,fetch",
                     "logger": logger})
consumer.subscribe([TOPIC])


def exit_with_parent():
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=exit_with_parent, daemon=True).start()
while True:
    msg = consumer.poll(0.2)
    if msg is None or msg.error():
        continue
    print(int(msg.key()), msg.partition(), msg.offset(), flush=True)
    consumer.store_offsets(msg)
