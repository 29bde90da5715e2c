"""One consumer-group member in its own process, for the group tests.

    python group_member.py CLIENT BOOTSTRAP GROUP TOPIC [STRATEGY]

CLIENT is confluent, confluent-consumer (KIP-848 protocol), kafka-python or aiokafka.
The member subscribes to TOPIC (a regular expression when it starts with ^), commits after
every batch it processes, and reports on stdout, one JSON object per line:
  {"assigned": [partitions], "topics": [topics]}   whenever its assignment changes
  {"committing": [values]}     before it commits the values' offsets
  {"consumed": [values]}       after the values' offsets are committed
  {"uncommitted": [values]}    when that commit failed (the partitions moved on)
A member killed while committing may have committed values it never reported consumed:
the last "committing" line says which.
A line "leave" on stdin makes it close cleanly (LeaveGroup) and exit; SIGKILL is how the
tests kill it without one.
"""
import asyncio
import json
import sys
import threading
import time

CLIENT, BOOTSTRAP, GROUP, TOPIC = sys.argv[1:5]
STRATEGY = sys.argv[5] if len(sys.argv) > 5 else None
SESSION_MS = 6000
HEARTBEAT_MS = 500
LIFETIME_S = 120

leaving = threading.Event()


def watch_stdin():
    for line in sys.stdin:
        if line.strip() == "leave":
            break
    leaving.set()


def report(**message):
    print(json.dumps(message), flush=True)


class Reporter:
    def __init__(self):
        self.assigned = None

    def assignment(self, topic_partitions):
        """Reports the assignment, given as objects with .topic and .partition, if it changed."""
        pairs = sorted((tp.topic, tp.partition) for tp in topic_partitions)
        if pairs != self.assigned:
            self.assigned = pairs
            report(assigned=sorted(p for _, p in pairs), topics=sorted({t for t, _ in pairs}))


def run_confluent(protocol):
    from confluent_kafka import Consumer, KafkaException

    config = {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": GROUP,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if protocol == "consumer":
        config["group.protocol"] = "consumer"
    else:
        config.update({
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
        })
        if STRATEGY:
            config["partition.assignment.strategy"] = STRATEGY
    consumer = Consumer(config)
    consumer.subscribe([TOPIC])
    reporter = Reporter()
    deadline = time.time() + LIFETIME_S
    while not leaving.is_set() and time.time() < deadline:
        messages = consumer.consume(100, 0.2)
        reporter.assignment(consumer.assignment())
        values = [m.value().decode() for m in messages if not m.error()]
        if values:
            report(committing=values)
            try:
                consumer.commit(asynchronous=False)
                report(consumed=values)
            except KafkaException:
                # The partitions moved on before the commit: another member reads again.
                report(uncommitted=values)
    consumer.close()


def run_kafka_python():
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    reporter = Reporter()
    deadline = time.time() + LIFETIME_S
    while not leaving.is_set() and time.time() < deadline:
        batches = consumer.poll(timeout_ms=200)
        reporter.assignment(consumer.assignment())
        values = [r.value.decode() for records in batches.values() for r in records]
        if values:
            report(committing=values)
            try:
                consumer.commit()
                report(consumed=values)
            except KafkaError:
                report(uncommitted=values)
    consumer.close()


async def run_aiokafka():
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    await consumer.start()
    reporter = Reporter()
    deadline = time.time() + LIFETIME_S
    try:
        while not leaving.is_set() and time.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            reporter.assignment(consumer.assignment())
            values = [r.value.decode() for records in batches.values() for r in records]
            if values:
                report(committing=values)
                try:
                    await consumer.commit()
                    report(consumed=values)
                except KafkaError:
                    report(uncommitted=values)
    finally:
        await consumer.stop()


threading.Thread(target=watch_stdin, daemon=True).start()
if CLIENT == "confluent":
    run_confluent("classic")
elif CLIENT == "confluent-consumer":
    run_confluent("consumer")
elif CLIENT == "kafka-python":
    run_kafka_python()
elif CLIENT == "aiokafka":
    asyncio.run(run_aiokafka())
else:
    sys.exit(f"unknown client {CLIENT}")
