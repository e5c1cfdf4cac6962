"""Local full stack benchmark: bring-up times and the dispatcher's cost per event.

    .venv/bin/python benchmarks/stack_bench.py [--events 500] [--samples 100] [--skip-startup]

Everything runs on a private temp state dir and free ports (your own `flts up` is never
touched) and is stopped at the end.

1. Bring-up (`flts up`, every deployment whose function exists):
   - cold: an empty state dir (Kafka storage format, PostgreSQL initdb, MLflow's schema
     migrations, buckets and topics created, every function process started). The OS page
     cache is not dropped (a shared machine), so binaries and Python modules may be warm.
   - again: `flts up` while everything runs (the idempotent check).
   - warm: `flts down`, then `flts up` on the same state dir (data kept, processes restarted).
   Infrastructure and processes (functions + dispatcher) are timed separately.
2. Dispatcher: a no-op function (functions-framework + flts.function_http.serve_events,
   answering `flts.dataset.ready` with a `flts.training-data` claim) in the preprocess slot,
   behind the real dispatcher process:
   - throughput: N events produced at once, time until the N replies are on the reply topic;
   - latency: one event at a time, produce → reply seen by a consumer (p50/p95), against a
     direct HTTP POST of the same event to the function: the difference is what Kafka and
     the dispatcher add per event.
   Both with the reply as the HTTP answer (binary CloudEvent) and through K_SINK (ingress).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from flts import events, routing  # noqa: E402
from flts.auth import EVENT_TOKEN_VAR, bearer_header  # noqa: E402
from flts.dev import infra, processes, stack  # noqa: E402
from flts.dispatcher.codec import event_from_kafka  # noqa: E402
from flts.dispatcher.producer import EventProducer  # noqa: E402
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
        tp = TopicPartition(routing.topic_of(events.TRAINING_DATA), 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_end(tp)
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
                        key = event_from_kafka(record.headers, record.value).data["object_key"]
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


def dataset_ready(key: str):
    data = events.DatasetReady(bucket="raw-data", object_key=key, identifier="bench")
    return events.make_event(events.DATASET_READY, "bench", data)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dispatcher_figures(cfg: stack.StackConfig, workdir: Path, n_events: int, samples: int) -> None:
    import httpx
    from cloudevents.conversion import to_binary

    source = workdir / "noop" / "main.py"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(NOOP_SOURCE)
    bootstrap = infra.kafka_bootstrap(cfg.infra)
    port = cfg.function_base_port
    url = f"http://127.0.0.1:{port}/"
    client_env = infra.client_env(cfg.infra)
    dispatcher = stack.Process(
        "bench-dispatcher", "dispatcher", cfg.dispatcher_port, [sys.executable, "-m", "flts.dispatcher"],
        {**client_env, "DISPATCH_TARGETS": f"preprocess={url}", "DISPATCH_INGRESS_PORT": str(cfg.dispatcher_port),
         "DISPATCH_GROUP_PREFIX": f"bench-{int(time.time())}-"},
        f"http://127.0.0.1:{cfg.dispatcher_port}/readyz", cfg.ingress_url)
    producer = EventProducer(bootstrap, client_id="bench")
    watcher = ReplyWatcher(bootstrap)
    watcher.start()
    http = httpx.Client(trust_env=False)
    print(f"\n{'dispatcher (no-op function)':<30}{'events/s':>9}{'e2e p50':>10}{'e2e p95':>10}"
          f"{'direct p50':>12}{'added p50':>11}")
    try:
        with bench_process(cfg, dispatcher):
            for mode, extra in (("reply", {}), ("K_SINK", {"K_SINK": cfg.ingress_url})):
                function = stack.Process("bench-noop", "function", port,
                                         functions_framework_command(str(source), "noop", cfg.host, port),
                                         {**client_env, **extra}, url + "healthz", url)
                with bench_process(cfg, function):
                    # warm-up, then a burst for throughput
                    warm = [f"{mode}/warm/{i}" for i in range(20)]
                    for key in warm:
                        producer.send_event("dataset-ready", dataset_ready(key))
                    watcher.wait_for(warm, 60)
                    burst = [f"{mode}/burst/{i}" for i in range(n_events)]
                    t0 = time.perf_counter()
                    for key in burst:
                        producer.send_event("dataset-ready", dataset_ready(key), wait=False)
                    producer.flush()
                    watcher.wait_for(burst, 60 + n_events * 0.5)
                    rate = n_events / (max(watcher.seen[k] for k in burst) - t0)
                    # one at a time: end-to-end latency, and the same event POSTed straight to the function
                    e2e, direct = [], []
                    for i in range(samples):
                        key = f"{mode}/seq/{i}"
                        t = time.perf_counter()
                        producer.send_event("dataset-ready", dataset_ready(key))
                        watcher.wait_for([key], 30)
                        e2e.append(watcher.seen[key] - t)
                        headers, body = to_binary(dataset_ready(f"{mode}/direct/{i}"))
                        headers.update(bearer_header(client_env.get(EVENT_TOKEN_VAR)))
                        t = time.perf_counter()
                        http.post(url, headers=headers, content=body).raise_for_status()
                        direct.append(time.perf_counter() - t)
                    ms = 1000.0
                    print(f"{mode:<30}{rate:>9.0f}{pct(e2e, .5) * ms:>8.1f}ms{pct(e2e, .95) * ms:>8.1f}ms"
                          f"{statistics.median(direct) * ms:>10.1f}ms{(pct(e2e, .5) - statistics.median(direct)) * ms:>9.1f}ms")
        print("(added = e2e - direct. In K_SINK mode the direct POST itself already writes the output through\n"
              " the ingress to Kafka, so there `added` is only the input's trip through Kafka and the dispatcher.)")
    finally:
        watcher.stopping = True
        watcher.join(5)
        http.close()
        producer.close()


def bench_process(cfg: stack.StackConfig, proc: stack.Process):
    """One of the benchmark's own processes, outside the stack's supervisor, stopped when the block ends."""
    return processes.running(proc.command, ready_url=proc.health_url, env=proc.env, log_path=cfg.infra.log_file(proc.name),
                             timeout=120, what=proc.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=500, help="events in the throughput burst (default 500)")
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
        dispatcher_figures(cfg, workdir, args.events, args.samples)
    finally:
        stack.down(cfg)
        shutil.rmtree(cfg.infra.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
