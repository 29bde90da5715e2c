"""Seeds the fuzz corpora from the golden frames captured from real clients.

    python3 fuzz/seed_corpus.py

request_decode seeds are [api index, version offset, body] as the target reads them;
record_batch seeds are the batches found inside the captured Produce requests.
"""
import glob
import os
import re
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROTOCOL = os.path.join(ROOT, "crates", "protocol")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def api_table():
    apis = []
    for path in glob.glob(os.path.join(PROTOCOL, "spec", "*.spec")):
        text = open(path).read()
        m = re.search(r"^api (\w+) key=(\d+) versions=(\d+)-(\d+) flexible=(\S+)", text, re.M)
        flexible = m.group(5)
        apis.append((int(m.group(2)), int(m.group(3)), int(flexible[:-1]) if flexible.endswith("+") else 1 << 15))
    apis.sort()
    return {key: (index, min_version, flexible_from) for index, (key, min_version, flexible_from) in enumerate(apis)}


def main():
    table = api_table()
    for target in ("request_decode", "record_batch"):
        os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    batches = 0
    for path in sorted(glob.glob(os.path.join(PROTOCOL, "tests", "golden", "frames", "*", "*.bin"))):
        frame = open(path, "rb").read()
        key, version = struct.unpack(">hh", frame[:4])
        client_id_length = struct.unpack(">h", frame[8:10])[0]
        index, min_version, flexible_from = table[key]
        body_at = 10 + max(client_id_length, 0) + (1 if version >= flexible_from else 0)
        name = os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path)
        with open(os.path.join(CORPUS, "request_decode", name), "wb") as out:
            out.write(bytes([index, version - min_version]) + frame[body_at:])
        # A batch header holds partition leader epoch -1 and magic 2 at bytes 12..17.
        for m in re.finditer(rb"\xff\xff\xff\xff\x02", frame):
            start = m.start() - 12
            if start < 0:
                continue
            length = struct.unpack(">i", frame[start + 8:start + 12])[0]
            batch = frame[start:start + 12 + length]
            if len(batch) == 12 + length:
                with open(os.path.join(CORPUS, "record_batch", f"{name}-{batches}"), "wb") as out:
                    out.write(b"\x00" + batch)
                batches += 1
    print(f"seeded request_decode and record_batch ({batches} batches)")


if __name__ == "__main__":
    main()
