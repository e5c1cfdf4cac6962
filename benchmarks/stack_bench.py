"""Local full stack benchmark: bring-up times and the dispatcher's cost per event.

    .venv/bin/python benchmarks/stack_bench.py [--events 5000] [--keys 256] [--concurrency 32]
                                               [--samples 100] [--skip-startup]

Everything runs on a private temp state dir and free ports (your own `flts up` is never
touched) and is stopped at the end.

1. Bring-up (`flts up`, every deployment whose function exists):
   - cold: an empty state dir (Kafka storage format, PostgreSQL initdb, MLflow's schema
     migrations, buckets and topics created, every function process started). The OS page
     cache is not dropped (a shared machine), so binaries and Python modules may be warm.
   - again: `flts up` while everything runs (the idempotent check).
   - warm: `flts down`, then `flts up` on the same state dir (data kept, processes restarted).
   Infrastructure and processes (functions + dispatcher) are timed separately.
2. Dispatcher: a no-op function in the preprocess slot, answering `flts.dataset.ready` with
   a `flts.training-data` claim, behind the real dispatcher process, once with
   DISPATCH_CONCURRENCY=1 and once with --concurrency, side by side (and their ratio):
   - throughput: N events over --keys datasets (Kafka keys; one key's events go one at a
     time) produced at once, time until the N replies are on the reply topic, and the CPU
     each process (tree) spent per event meanwhile (`bench`: this process, its producer and
     reply watcher; on 2 cores everything shares them, so the sum bounds the rate);
   - latency: one event at a time, produce → reply seen by a consumer (p50/p95), against a
     direct HTTP POST of the same event to the function: the difference is what Kafka and
     the dispatcher add per event.
   `reply` mode: the reply is the HTTP answer (binary CloudEvent), from a raw ASGI no-op on
   uvicorn that costs far less per event than the dispatcher, so the dispatcher is what is
   measured. `K_SINK` mode: the functions' own HTTP entry (functions-framework +
   `serve_events`, gunicorn gthread, one thread per delivery in flight) posts its output to
   the dispatcher's ingress.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from flts import events, routing  # noqa: E402
from flts.auth import EVENT_TOKEN_VAR, bearer_header  # noqa: E402
from flts.dev import infra, processes, stack  # noqa: E402
from flts.dispatcher.codec import event_to_kafka  # noqa: E402
from flts.spec import functions_framework_command  # noqa: E402

NOOP_SOURCE = '''
import functions_framework

from flts import events
from flts.function_http import serve_events


def handle(event, env):
    data = event.data
    claim = {"bucket": "processed-data", "object_key": data["object_key"], "config_hash": "0" * 16,
             "identifier": data["identifier"]}
    return [events.make_event(events.TRAINING_DATA, "noop", claim)]


@functions_framework.http
def noop(request):
    return serve_events(request, handle)
'''


# The reply-mode no-op: a raw ASGI app on uvicorn (httptools, uvloop), so that the function
# costs far less than the dispatcher per event and the burst measures the dispatcher. It
# answers each `flts.dataset.ready` with a binary-mode `flts.training-data` reply, same subject.
FAST_NOOP_SOURCE = '''
import uuid

import orjson


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    if scope["method"] != "POST":
        return await respond(send, 200, [], b"ok")
    data = orjson.loads(body)
    claim = {"bucket": "processed-data", "object_key": data["object_key"], "config_hash": "0" * 16,
             "identifier": data["identifier"]}
    headers = [(b"ce-specversion", b"1.0"), (b"ce-id", uuid.uuid4().hex.encode()), (b"ce-source", b"noop"),
               (b"ce-type", b"flts.training-data"), (b"ce-subject", data["identifier"].encode()),
               (b"content-type", b"application/json")]
    await respond(send, 200, headers, orjson.dumps(claim))


async def respond(send, status, headers, body):
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def make_config() -> stack.StackConfig:
    """A private state dir and free ports (flts.dev.infra.ephemeral_config) plus a free block for the processes."""
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    return stack.StackConfig(infra=infra.ephemeral_config(), dispatcher_port=base, function_base_port=base + 1)


def quiet(_line: str) -> None:
    pass


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- 1. bring-up
def bring_up(cfg: stack.StackConfig) -> tuple[float, float]:
    t_infra = timed(infra.start_all, cfg.infra, topics=routing.all_topics())
    t_procs = timed(stack.up, cfg, with_infra=False, echo=quiet)
    return t_infra, t_procs


def startup_figures(cfg: stack.StackConfig) -> None:
    print(f"processes: {', '.join(p.name for p in stack.plan(cfg))}")
    cold = bring_up(cfg)
    again = timed(stack.up, cfg, echo=quiet)
    down_all = timed(stack.down, cfg)
    warm = bring_up(cfg)
    print(f"{'bring-up':<28}{'infra':>9}{'processes':>11}{'total':>9}")
    print(f"{'cold (empty state dir)':<28}{cold[0]:>8.1f}s{cold[1]:>10.1f}s{sum(cold):>8.1f}s")
    print(f"{'warm (down, then up)':<28}{warm[0]:>8.1f}s{warm[1]:>10.1f}s{sum(warm):>8.1f}s")
    print(f"{'up while running':<28}{'':>9}{'':>11}{again:>8.1f}s")
    print(f"{'down (everything)':<28}{'':>9}{'':>11}{down_all:>8.1f}s")
    stack.down(cfg, with_infra=False)


# --------------------------------------------------------------------------- 2. dispatcher
class ReplyWatcher(threading.Thread):
    """Reads the reply topic from its current end; records when each input's reply arrives."""

    def __init__(self, bootstrap: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        topic = routing.topic_of(events.TRAINING_DATA)  # every partition: replies are keyed by dataset
        parts = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or {0})]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)  # resolve "end" now, before anything is produced
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            for records in self.consumer.poll(timeout_ms=100).values():
                now = time.perf_counter()
                with self.cond:
                    for record in records:
                        key = orjson.loads(record.value)["object_key"]  # binary mode: the value is the data
                        self.seen.setdefault(key, now)
                    self.cond.notify_all()
        self.consumer.close(autocommit=False)

    def wait_for(self, keys: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        with self.cond:
            while not all(k in self.seen for k in keys):
                left = deadline - time.perf_counter()
                if left <= 0:
                    missing = sum(k not in self.seen for k in keys)
                    raise TimeoutError(f"{missing} of {len(keys)} replies missing after {timeout:.0f}s")
                self.cond.wait(left)


class HarnessProducer:
    """The benchmark's own writer: kafka-python, as the dispatcher's producer was before it moved to
    confluent-kafka, so the harness costs the same CPU before and after and only the dispatcher changes."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="bench", acks="all",
                                       enable_idempotence=True)

    def send_event(self, topic: str, event, wait: bool = True):
        message = event_to_kafka(event)
        future = self._producer.send(topic, value=message.value, key=message.key.encode(),
                                     headers=list(message.headers.items()))
        return future.get(timeout=30) if wait else future

    def flush(self) -> None:
        self._producer.flush(timeout=60)

    def close(self) -> None:
        self._producer.close(timeout=5)


def dataset_ready(key: str, identifier: str = "bench"):
    data = events.DatasetReady(bucket="raw-data", object_key=key, identifier=identifier)
    return events.make_event(events.DATASET_READY, "bench", data)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process and its children (gunicorn's workers), and of this one alone."""
    import psutil

    spent = {"bench": sum(psutil.Process().cpu_times()[:2])}  # its children are the processes measured
    for name, pid in pids.items():
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        spent[name] = sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    return spent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    """The Kafka clients, the reply watcher and the no-op function's source, shared by every run."""

    def __init__(self, cfg: stack.StackConfig, workdir: Path, n_events: int, samples: int, keys: int):
        import httpx

        self.cfg, self.n_events, self.samples, self.keys = cfg, n_events, samples, keys
        self.source = workdir / "noop" / "main.py"
        self.source.parent.mkdir(parents=True, exist_ok=True)
        self.source.write_text(NOOP_SOURCE)
        (self.source.parent / "fastnoop.py").write_text(FAST_NOOP_SOURCE)
        self.port = cfg.function_base_port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.client_env = infra.client_env(cfg.infra)
        bootstrap = infra.kafka_bootstrap(cfg.infra)
        self.group_prefix = f"bench-{int(time.time())}-"  # one group for every run: each goes on where the last stopped
        self.producer = HarnessProducer(bootstrap)
        self.watcher = ReplyWatcher(bootstrap)
        self.watcher.start()
        self.http = httpx.Client(trust_env=False)

    def close(self) -> None:
        self.watcher.stopping = True
        self.watcher.join(5)
        self.http.close()
        self.producer.close()

    def dispatcher(self, concurrency: int) -> stack.Process:
        cfg = self.cfg
        return stack.Process(
            "bench-dispatcher", "dispatcher", cfg.dispatcher_port, [sys.executable, "-m", "flts.dispatcher"],
            {**self.client_env, "DISPATCH_TARGETS": f"preprocess={self.url}",
             "DISPATCH_INGRESS_PORT": str(cfg.dispatcher_port), "DISPATCH_GROUP_PREFIX": self.group_prefix,
             "DISPATCH_CONCURRENCY": str(concurrency)},
            f"http://127.0.0.1:{cfg.dispatcher_port}/readyz", cfg.ingress_url)

    def function(self, mode: str) -> stack.Process:
        """reply: the raw ASGI no-op on uvicorn. K_SINK: the functions' own HTTP entry (functions-framework,
        serve_events) posting to the ingress, with a gthread per delivery in flight (its default is 4 per CPU)."""
        if mode == "reply":
            command = [sys.executable, "-m", "uvicorn", "--app-dir", str(self.source.parent), "fastnoop:app",
                       "--host", self.cfg.host, "--port", str(self.port), "--http", "httptools", "--loop", "uvloop",
                       "--no-access-log", "--log-level", "warning"]
            env = self.client_env
        else:
            command = functions_framework_command(str(self.source), "noop", self.cfg.host, self.port)
            env = {**self.client_env, "WORKERS": "1", "THREADS": str(NOOP_THREADS), "K_SINK": self.cfg.ingress_url}
        return stack.Process("bench-noop", "function", self.port, command, env, self.url + "healthz", self.url)

    def burst(self, tag: str, n: int, pids: dict[str, int] | None = None) -> float:
        """n events over `keys` datasets produced at once; events/s until the last reply is on Kafka.
        With `pids`, the CPU each process tree spent is kept in self.cpu (ms per event)."""
        burst = [f"{tag}/{i}" for i in range(n)]
        before = cpu_seconds(pids or {})
        t0 = time.perf_counter()
        for i, key in enumerate(burst):
            self.producer.send_event("dataset-ready", dataset_ready(key, f"bench-{i % self.keys}"), wait=False)
        self.producer.flush()
        self.watcher.wait_for(burst, 60 + n * 0.5)
        after = cpu_seconds(pids or {})
        self.cpu = {name: (after[name] - before[name]) * 1000 / n for name in after}
        return n / (max(self.watcher.seen[k] for k in burst) - t0)

    def latencies(self, tag: str) -> tuple[list[float], list[float]]:
        """One event at a time: produce → reply seen, and the same event POSTed straight to the function."""
        from cloudevents.conversion import to_binary

        e2e, direct = [], []
        for i in range(self.samples):
            key = f"{tag}/seq/{i}"
            t = time.perf_counter()
            self.producer.send_event("dataset-ready", dataset_ready(key))
            self.watcher.wait_for([key], 30)
            e2e.append(self.watcher.seen[key] - t)
            headers, body = to_binary(dataset_ready(f"{tag}/direct/{i}"))
            headers.update(bearer_header(self.client_env.get(EVENT_TOKEN_VAR)))
            t = time.perf_counter()
            self.http.post(self.url, headers=headers, content=body).raise_for_status()
            direct.append(time.perf_counter() - t)
        return e2e, direct

    def run(self, concurrency: int, mode: str) -> float:
        """One dispatcher setting and one reply mode; prints its row, returns events/s."""
        tag = f"c{concurrency}/{mode}"
        with bench_process(self.cfg, self.dispatcher(concurrency)) as dispatcher, \
                bench_process(self.cfg, self.function(mode)) as function:
            self.burst(f"{tag}/warm", 200)
            kafka = processes.read_pid_file(self.cfg.infra.pid_file("kafka"))
            pids = {"dispatcher": dispatcher.pid, "function": function.pid, **({"kafka": kafka.pid} if kafka else {})}
            rate = self.burst(f"{tag}/burst", self.n_events, pids)
            e2e, direct = self.latencies(tag)
        ms, added = 1000.0, pct(e2e, .5) - statistics.median(direct)
        cpu = " ".join(f"{name} {v:.2f}" for name, v in self.cpu.items())
        print(f"{mode:<10}{concurrency:>12}{rate:>10.0f}{pct(e2e, .5) * ms:>8.1f}ms{pct(e2e, .95) * ms:>8.1f}ms"
              f"{statistics.median(direct) * ms:>10.1f}ms{added * ms:>9.1f}ms   {cpu}")
        return rate


NOOP_THREADS = 64


def dispatcher_figures(cfg: stack.StackConfig, workdir: Path, n_events: int, samples: int, keys: int,
                       concurrency: int) -> None:
    bench = Bench(cfg, workdir, n_events, samples, keys)
    print(f"\ndispatcher: burst of {n_events} events over {keys} keys (datasets). No-op function: reply = raw ASGI on "
          f"uvicorn; K_SINK = functions-framework + serve_events, gunicorn gthread 1 worker x {NOOP_THREADS} threads")
    print(f"{'mode':<10}{'concurrency':>12}{'events/s':>10}{'e2e p50':>10}{'e2e p95':>10}"
          f"{'direct p50':>12}{'added p50':>11}   CPU ms per event in the burst")
    rates: dict[tuple[str, int], float] = {}
    try:
        for mode in ("reply", "K_SINK"):
            for c in (1, concurrency):
                rates[mode, c] = bench.run(c, mode)
        for mode in ("reply", "K_SINK"):
            print(f"{mode}: concurrency {concurrency} / 1 = {rates[mode, concurrency]:.0f} / {rates[mode, 1]:.0f} "
                  f"events/s = {rates[mode, concurrency] / rates[mode, 1]:.1f}x")
        print("(added = e2e - direct. In K_SINK mode the direct POST itself already writes the output through\n"
              " the ingress to Kafka, so there `added` is only the input's trip through Kafka and the dispatcher.)")
    finally:
        bench.close()


def bench_process(cfg: stack.StackConfig, proc: stack.Process):
    """One of the benchmark's own processes, outside the stack's supervisor, stopped when the block ends."""
    return processes.running(proc.command, ready_url=proc.health_url, env=proc.env, log_path=cfg.infra.log_file(proc.name),
                             timeout=120, stop_timeout=5, what=proc.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events in the throughput burst (default 5000)")
    parser.add_argument("--keys", type=int, default=256,
                        help="datasets (Kafka keys) the burst is spread over; one key's events go one at a time")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="DISPATCH_CONCURRENCY measured against 1 (default 32)")
    parser.add_argument("--samples", type=int, default=100, help="sequential latency samples (default 100)")
    parser.add_argument("--skip-startup", action="store_true", help="only the dispatcher figures")
    args = parser.parse_args()
    cfg = make_config()
    workdir = cfg.infra.state_dir / "bench"
    print(f"state {cfg.infra.state_dir}, kafka {infra.kafka_bootstrap(cfg.infra)}")
    try:
        if not args.skip_startup:
            startup_figures(cfg)
        else:
            infra.start_all(cfg.infra, topics=routing.all_topics())
        dispatcher_figures(cfg, workdir, args.events, args.samples, args.keys, args.concurrency)
    finally:
        stack.down(cfg)
        shutil.rmtree(cfg.infra.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
