"""Write each outcome once: what the dispatcher writes to Kafka is de-duplicated within one upload's chain.

At-least-once delivery means a function may answer the same input twice (a redelivery after
a kill, a retry after a Kafka outage); its handlers are idempotent, so the second answer
repeats the first (eval re-emits the same promotion pointer). Written twice, that repeat is
a second `model-selected`. So every event the dispatcher writes (ingress or reply) gets a key,
sha256 of (root, type, subject, data), where the *root* is the id of the event that started
the chain (the upload's `flts.dataset.ready`), carried from record to record in the Kafka
header `flts_root`: the ingress knows it because each function posts to its own K_SINK path
(`/from/<deployment>`) and the dispatcher knows which record with the output's Kafka key
it is delivering to that deployment (one delivery per key is in flight at a time). A key
already written is not written again: the first answer wins. Uploading the same file again
starts a new chain (a new root), so it is never taken for a repeat.

The keys travel in the header `flts_key`, so a restarted dispatcher reads the recent ones
back from the topics (`seed`) before it writes anything.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import orjson

ROOT_HEADER = "flts_root"
KEY_HEADER = "flts_key"
CAPACITY = 200_000  # keys remembered (≈ 20 MB); older ones are forgotten first
SEED_PER_PARTITION = 5_000  # records read back per partition at start
LOCK_STRIPES = 1024  # a write holds its stripe until Kafka acks: few stripes, deliveries queue on each other


def event_key(root: str, event) -> str:
    data = event.data
    data = data.hex() if isinstance(data, bytes | bytearray) else data
    body = orjson.dumps([root, event["type"], event.get("subject"), data], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def root_of(record_headers, event_id: str) -> str:
    """The chain's root: the record's `flts_root`, or its own id when it starts a chain (an upload)."""
    value = dict(record_headers or []).get(ROOT_HEADER)
    return value.decode("utf-8", "replace") if value else event_id


class Written:
    """The keys written so far (bounded, oldest forgotten first), and the locks that make
    "not written yet? then write it" one step for a key.

    One lock per stripe of keys, not one for all: a write holds its lock until Kafka acks,
    and deliveries in flight at the same time must not wait for each other's acks.
    """

    def __init__(self, capacity: int = CAPACITY, stripes: int = LOCK_STRIPES):
        self._keys: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._capacity = capacity
        self._map_lock = threading.Lock()  # the OrderedDict itself
        self._stripes = [threading.Lock() for _ in range(stripes)]

    def lock(self, key: str) -> threading.Lock:
        """The lock that two writes of the same key share."""
        return self._stripes[int(key[:8], 16) % len(self._stripes)]

    def get(self, key: str) -> tuple[str, int] | None:
        with self._map_lock:
            return self._keys.get(key)

    def add(self, key: str, topic: str, offset: int) -> None:
        with self._map_lock:
            self._keys[key] = (topic, offset)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def __len__(self) -> int:
        return len(self._keys)


def seed(written: Written, bootstrap: str, topics: list[str], per_partition: int = SEED_PER_PARTITION) -> None:
    """Read the keys of the last records of `topics` back (a restarted dispatcher's memory)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="flts-dedup-seed")
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            return
        consumer.assign(parts)
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
        remaining = {tp for tp in parts if consumer.position(tp) < ends[tp]}
        while remaining:
            batch = consumer.poll(timeout_ms=1000)
            if not batch:
                break  # nothing more within a second: start with what was read
            for tp, records in batch.items():
                for record in records:
                    key = dict(record.headers or []).get(KEY_HEADER)
                    if key:
                        written.add(key.decode(), tp.topic, record.offset)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close(autocommit=False)


def write_once(producer, written: Written, topic: str, event, root: str | None) -> tuple[int, bool]:
    """Write `event` unless its key was written already; (offset, duplicate). No root (an event
    posted to the plain ingress `/`): written as it is, without a key."""
    if root is None:
        return producer.send_event(topic, event), False
    key = event_key(root, event)
    with written.lock(key):  # two identical posts at once: one writes, the other sees its key
        earlier = written.get(key)
        if earlier is not None:
            return earlier[1], True
        offset = producer.send_event(topic, event, headers=[(ROOT_HEADER, root.encode()), (KEY_HEADER, key.encode())])
        written.add(key, topic, offset)
    return offset, False
