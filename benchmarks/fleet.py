"""Fleet benchmark: how the local stack's cost grows with the number of series (issue 13).

    .venv/bin/python benchmarks/fleet.py [--sizes 1 10 50] [--train-rows 1500] [--test-rows 300]

For each N, a fresh local stack (private state dir and ports, every family, the dispatcher)
gets N series at once, cut from the real LTE data (PobleSec and ElBorn, consecutive
sub-periods of TRAIN + TEST rows, each its own identifier), and runs until every one is
promoted. One series goes through first, unmeasured, so that no figure carries the processes'
first imports. Measured per N:

- wall seconds from the first upload until the last promotion, and per series;
- events per second through each topic (its records over the span of their timestamps);
- CPU seconds of the stack's processes (every member of each supervised process group,
  sampled before and after; the Kafka/S3/MLflow servers are left out) per series;
- peak RSS (VmHWM) of each function process and the dispatcher.

Then the growth from the smallest N to the largest as ratios (issue 13's targets: CPU per
series flat within 1.2x; wall per series at N=50 at most 60 % of N=1, from pipelining).
Everything started is stopped at the end of each N. Trainers run with EPOCHS=5 (the cost
of the pipeline's machinery, not of long training, is what is measured).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from flts import routing
from flts.dev import infra, processes, stack
from flts.promotion import current_key
from flts.storage import ObjectNotFound, store_from_env

REPO = Path(__file__).resolve().parent.parent
FAST = {"EPOCHS": "5", "PATIENCE": "2", "PROMOTION_SEARCH_DELAY_SEC": "0.5", "DISPATCH_OFFSET_RESET": "earliest"}
TICKS = os.sysconf("SC_CLK_TCK")


def series(count: int, train_rows: int, test_rows: int, folder: Path) -> list[tuple[str, Path, Path]]:
    """`count` (identifier, train CSV, test CSV) cut from the LTE stations, consecutive sub-periods."""
    frames = [pd.concat([pd.read_csv(REPO / "data/lte" / f"{s}.csv"), pd.read_csv(REPO / "data/lte" / f"{s}_test.csv")])
              for s in ("PobleSec", "ElBorn")]
    span, out = train_rows + test_rows, []
    starts = [(f, start) for f in range(len(frames)) for start in range(0, len(frames[f]) - span, test_rows)]
    if len(starts) < count:
        raise SystemExit(f"the data gives {len(starts)} sub-periods of {span} rows; ask for fewer series")
    for i, (f, start) in enumerate(starts[:count]):
        part = frames[f].iloc[start:start + span]
        train, test = folder / f"fleet{i:03d}.csv", folder / f"fleet{i:03d}_test.csv"
        part.iloc[:train_rows].to_csv(train, index=False)
        part.iloc[train_rows:].to_csv(test, index=False)
        out.append((f"fleet{i:03d}", train, test))
    return out


def cpu_and_peak(cfg: stack.StackConfig) -> tuple[float, dict[str, float]]:
    """CPU seconds of every live member of the stack's process groups, and each group's peak RSS (MB)."""
    cpu, peak = 0.0, {}
    for proc in stack.plan(cfg):
        pid = stack.running_pid(cfg, proc.name)
        members = set(processes.group_members(pid)) if pid else set()
        members |= set(processes.pids_in(stack.workdir(cfg, proc.name)))
        for member in members:
            try:
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
                status = Path(f"/proc/{member}/status").read_text()
                hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
                peak[proc.name] = max(peak.get(proc.name, 0.0), hwm / 1024)
            except (OSError, StopIteration, IndexError):
                continue  # it ended between listing and reading
    return cpu, peak


def topic_rates(cfg: stack.StackConfig, exclude: str) -> dict[str, float]:
    """Records per second through each pipeline topic: count / span of their timestamps (the warm-up
    series' records, keyed by its identifier, left out)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=infra.kafka_bootstrap(cfg.infra), enable_auto_commit=False)
    rates = {}
    try:
        for topic in routing.TOPICS.values():
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not parts:
                continue
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            ends, stamps = consumer.end_offsets(parts), []
            while any(consumer.position(tp) < ends[tp] for tp in parts):
                for records in consumer.poll(timeout_ms=1000).values():
                    stamps += [r.timestamp / 1000 for r in records if r.key != exclude.encode()]
            if len(stamps) > 1:
                rates[topic] = len(stamps) / max(max(stamps) - min(stamps), 1e-3)
    finally:
        consumer.close()
    return rates


def wait_promoted(cfg: stack.StackConfig, identifiers: list[str], timeout: float) -> float:
    store = store_from_env(infra.client_env(cfg.infra))
    started, pending = time.monotonic(), set(identifiers)
    while pending:
        for ident in list(pending):
            try:
                store.get_bytes("model-promotion", current_key(ident))
                pending.discard(ident)
            except ObjectNotFound:
                pass
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{len(pending)} of {len(identifiers)} series not promoted after {timeout:.0f} s")
        print(f"\r  promoted {len(identifiers) - len(pending)}/{len(identifiers)}", end="", flush=True)
        time.sleep(1.0)
    print()
    return time.monotonic() - started


def run(size: int, train_rows: int, test_rows: int, workdir: Path) -> dict:
    cfg_infra = infra.ephemeral_config()
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=cfg_infra, function_base_port=base + 1, dispatcher_port=base)
    *data, warm = series(size + 1, train_rows, test_rows, workdir)
    try:
        infra.start_all(cfg_infra, topics=routing.all_topics())
        stack.up(cfg, with_infra=False, echo=lambda _: None)
        # One series first, not measured: each process pays its first imports (torch, prophet, numba) once.
        stack.upload(cfg, warm[1], warm[2], warm[0])
        wait_promoted(cfg, [warm[0]], 600)
        cpu_before, _ = cpu_and_peak(cfg)
        started = time.monotonic()
        for identifier, train, test in data:
            stack.upload(cfg, train, test, identifier)
        wall = time.monotonic() - started + wait_promoted(cfg, [d[0] for d in data], 600 + 120 * size)
        cpu_after, peak = cpu_and_peak(cfg)
        return {"n": size, "wall": wall, "cpu": cpu_after - cpu_before, "rates": topic_rates(cfg, exclude=warm[0]),
            "peak": peak}
    finally:
        stack.down(cfg, with_infra=False)
        infra.stop_all(cfg_infra)
        shutil.rmtree(cfg_infra.state_dir, ignore_errors=True)


def report(results: list[dict]) -> None:
    print(f"\n{'N':>4} {'wall s':>8} {'wall/series':>12} {'CPU s':>8} {'CPU/series':>11}")
    for r in results:
        print(f"{r['n']:>4} {r['wall']:>8.1f} {r['wall'] / r['n']:>12.1f} {r['cpu']:>8.1f} {r['cpu'] / r['n']:>11.1f}")
    print("\nevents/s per topic:", "  ".join(f"N={r['n']}: " + ", ".join(f"{t} {v:.1f}" for t, v in r["rates"].items())
                                           for r in results))
    print("peak RSS MB per process (largest N):",
          ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(results[-1]["peak"].items())))
    first, last = results[0], results[-1]
    if last["n"] > first["n"]:
        cpu_ratio = (last["cpu"] / last["n"]) / (first["cpu"] / first["n"])
        wall_ratio = (last["wall"] / last["n"]) / (first["wall"] / first["n"])
        print(f"\ngrowth N={first['n']} -> N={last['n']}: CPU per series x{cpu_ratio:.2f} (target <= 1.2), "
              f"wall per series x{wall_ratio:.2f} (target <= 0.6)")
        rss = {name: last["peak"].get(name, 0) / max(first["peak"].get(name, 1), 1) for name in last["peak"]}
        print("peak RSS growth per process: " + ", ".join(f"{n} x{v:.2f}" for n, v in sorted(rss.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50], help="series counts (default 1 10 50)")
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--test-rows", type=int, default=300)
    args = parser.parse_args()
    os.environ.update(FAST)  # the stack's processes inherit this environment
    results = []
    with tempfile.TemporaryDirectory(prefix="flts-fleet-") as tmp:
        for size in sorted(args.sizes):
            print(f"N = {size}: stack up, {size} upload(s)", flush=True)
            results.append(run(size, args.train_rows, args.test_rows, Path(tmp)))
            print(f"N = {size}: {results[-1]['wall']:.1f} s, {results[-1]['cpu']:.1f} CPU s", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
