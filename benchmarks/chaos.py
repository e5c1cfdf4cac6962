"""Chaos benchmark: the local full stack under faults, and whether it heals without anyone acting.

    .venv/bin/python benchmarks/chaos.py [--faults kill-trainer,kill-dispatcher,restart-kafka,...] [--timeout 300]

Starts the infrastructure and the stack on a private temp state dir and free ports (your own
`flts up` is never touched), then per fault (flts.dev.chaos.FAULTS): uploads a slice of the
real ElBorn data (last 3000 training rows, first 600 test rows, EPOCHS=3), strikes
mid-pipeline (SIGKILLs the fault's process group, or stops an infrastructure service for a
while: restart-kafka 5 s, s3-/mlflow-/postgres-outage 20 s, then starts it again on the same
port and state), and prints: recovered (promoted, nothing lost, no dead letter), recovery
seconds (SIGKILL → the process healthy again under the supervisor; for an outage, the
service's start → healthy), the pipeline's time, promotions, model-selected events,
duplicates, lost events, dead letters.
Everything is stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import pandas as pd  # noqa: E402

from flts import routing  # noqa: E402
from flts.dev import chaos, infra, stack  # noqa: E402

FAST_ENV = {"EPOCHS": "3", "PATIENCE": "2", "PROMOTION_SEARCH_DELAY_SEC": "0.5", "DISPATCH_OFFSET_RESET": "latest"}


def _slice(folder: Path) -> tuple[Path, Path]:
    data = REPO / "data" / "lte"
    paths = folder / "ElBorn_slice.csv", folder / "ElBorn_slice_test.csv"
    pd.read_csv(data / "ElBorn.csv").tail(3000).to_csv(paths[0], index=False)
    pd.read_csv(data / "ElBorn_test.csv").head(600).to_csv(paths[1], index=False)
    return paths


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _row(r: chaos.Result) -> str:
    seconds = _seconds
    return (f"{r.fault:<16} {'yes' if r.recovered else 'NO':<9} {seconds(r.recovery_seconds):>9} "
            f"{seconds(r.pipeline_seconds):>9} {r.promotions:>10} {r.model_selected:>8} {r.duplicates:>10} "
            f"{len(r.lost):>5} {len(r.dead_letters):>4}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(chaos.FAULTS), help=f"comma-separated, of {list(chaos.FAULTS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per fault")
    args = parser.parse_args()
    unknown = [f for f in args.faults.split(",") if f not in chaos.FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {unknown} (known: {list(chaos.FAULTS)})")
    os.environ.update({**FAST_ENV, "DISPATCH_GROUP_PREFIX": f"chaos-{uuid.uuid4().hex[:8]}-"})
    icfg = infra.ephemeral_config()
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=icfg, function_base_port=base + 1, dispatcher_port=base)
    results = []
    with tempfile.TemporaryDirectory(prefix="flts-chaos-") as tmp:
        train_csv, test_csv = _slice(Path(tmp))
        try:
            stack.up(cfg)
            for name in args.faults.split(","):
                results.append(chaos.run_fault(cfg, chaos.FAULTS[name], train_csv, test_csv, args.timeout))
                for letter in results[-1].dead_letters + [f"lost: {e}" for e in results[-1].lost]:
                    print(f"  {name}: {letter}", file=sys.stderr)
        finally:
            stack.down(cfg)
            shutil.rmtree(icfg.state_dir, ignore_errors=True)
    print(f"\n{'fault':<16} {'recovered':<9} {'restart s':>9} {'pipeline':>9} {'promotions':>10} "
          f"{'selected':>8} {'duplicates':>10} {'lost':>5} {'dlq':>4}")
    for r in results:
        print(_row(r))
    return 0 if all(r.recovered for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
