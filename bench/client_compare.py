"""`spool bench` (spool-client) next to a librdkafka client (confluent-kafka) for the same
load: 1 KiB records, keyless, a topic of 6 partitions, acks=1, linger 5 ms, 1 MiB batches;
then both read the whole topic back. The broker is the same release build for both, on a
fresh data directory. Each run starts after a sync, so that neither client pays for the
write-back of the other's data (a run that starts with gigabytes of dirty pages is throttled
by the kernel, whichever client it is). Prints one line per figure and the ratio
spool / librdkafka.

    cargo build --release -p spool
    build/venv/bin/python bench/client_compare.py [--mb 1024] [--rounds 2] [--spool target/release/spool]
"""
import argparse
import json
import os
import subprocess

from confluent_kafka.admin import AdminClient, NewTopic

from client_bench import MESSAGE, PARTITIONS, consume, produce, running


def spool_bench(spool, address, *args):
    result = subprocess.run([spool, "bench", *args, "--brokers", address, "--json", "-q"],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spool", default="target/release/spool")
    args = parser.parse_args()
    count = args.mb * 1024
    with running(args.spool) as (_, address, _):
        admin = AdminClient({"bootstrap.servers": address})
        for round in range(args.rounds):
            rd_topic, spool_topic = f"rd{round}", f"sp{round}"
            for topic in (rd_topic, spool_topic):
                admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
            os.sync()
            rd = produce(address, rd_topic, count, "1", spread=False)
            os.sync()
            sp = spool_bench(args.spool, address, "produce", spool_topic, "-n", str(count), "-s", str(len(MESSAGE)),
                             "--acks", "1", "--linger-ms", "5", "--batch-size", str(1 << 20))
            assert sp["messages"] == count and sp["errors"] == 0, sp
            p = sp["latency_ms"]
            print(f"round {round + 1} produce ({args.mb} MB): librdkafka {rd:.0f} MB/s, spool bench "
                  f"{sp['mb_per_second']:.0f} MB/s ({sp['mb_per_second'] / rd:.0%}); spool ack latency "
                  f"p50 {p['p50']:.1f} p99 {p['p99']:.1f} max {p['max']:.1f} ms")
            rd = consume(address, rd_topic, count * len(MESSAGE))
            sp = spool_bench(args.spool, address, "consume", spool_topic)
            assert sp["messages"] == count, sp
            print(f"round {round + 1} consume ({args.mb} MB): librdkafka {rd:.0f} MB/s, spool bench "
                  f"{sp['mb_per_second']:.0f} MB/s ({sp['mb_per_second'] / rd:.0%})")
            # Rounds must not fill the disk: a nearly full file system slows every write.
            for future in admin.delete_topics([rd_topic, spool_topic]).values():
                future.result(30)


if __name__ == "__main__":
    main()
