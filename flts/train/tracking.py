"""MLflow through an explicit client (no global active run): experiments, runs, dedup lookup.

MLflow takes ~1.6 s to import, so it is imported inside these functions only.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from flts.logs import log

EPOCH_PREFIX = "epoch_"  # per-epoch series; not part of the run's summary metrics
OWNER_TAG = "flts.owner"  # host:pid:process start time of the trainer that runs it
LIVE_RUN_WAIT_SEC = 900.0  # longest wait for a live trainer's run of the same config to end
LIVE_RUN_POLL_SEC = 2.0


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or None)


def artifact_location(root: str, experiment: str) -> str | None:
    if not root:
        return None
    if "://" in root:
        return f"{root.rstrip('/')}/{experiment}"
    return (Path(root).resolve() / experiment).as_uri()


def experiment_id(mlflow_client, name: str, artifact_root: str = "") -> str:
    """Get or create the experiment; another trainer may create it at the same moment."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_location(artifact_root, name))
        except MlflowException:
            found = mlflow_client.get_experiment_by_name(name)  # lost the race: use the winner's
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return found.experiment_id


def find_finished_run(mlflow_client, exp_id: str, model_type: str, config_hash: str):
    """The newest FINISHED run of this model type and config hash, or None (durable dedup)."""
    runs = mlflow_client.search_runs(
        [exp_id],
        filter_string=(f"tags.model_type = '{model_type}' and tags.config_hash = '{config_hash}' "
                       f"and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def summary_metrics(run) -> dict[str, float]:
    return {k: float(v) for k, v in run.data.metrics.items() if not k.startswith(EPOCH_PREFIX)}


def start_run(mlflow_client, exp_id: str, run_name: str, tags: dict[str, str]):
    return mlflow_client.create_run(exp_id, tags=tags, run_name=run_name)


def log_params(mlflow_client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])


def log_metrics(mlflow_client, run_id: str, metrics: dict[str, float], series: dict[str, list[float]] | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    for name, values in (series or {}).items():
        entries += [Metric(f"{EPOCH_PREFIX}{name}", float(v), now, step) for step, v in enumerate(values, start=1)]
    for start in range(0, len(entries), 900):  # log_batch takes at most 1000 metrics
        mlflow_client.log_batch(run_id, metrics=entries[start:start + 900])


def finish(mlflow_client, run_id: str, status: str, error: str | None = None) -> None:
    """End the run as FINISHED, FAILED (settles its type for eval) or KILLED (settles nothing)."""
    try:
        if error:
            mlflow_client.set_tag(run_id, "error", error[:5000])
        mlflow_client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the FAILED event (or the retry) must still go out
        log("train_run_close_failed", level="warning", run_id=run_id, error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- runs a killed trainer left
def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc): a pid reused later has another."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> str:
    """This trainer process, as the run's OWNER_TAG records it."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def owner_alive(value: str) -> bool | None:
    """True/False when the owner is a process of this host; None when it cannot be told (another host)."""
    host, _, rest = value.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _process_start(int(pid)) == started


def settle_unfinished_runs(mlflow_client, exp_id: str, model_type: str, config_hash: str) -> list[str]:
    """Before training again (the event came again): a RUNNING run of this model type and config whose
    trainer process is gone was killed mid-run, so it is marked KILLED; one whose trainer still runs
    (a redelivery while the first delivery still trains) is waited for, so the caller finds it FINISHED.
    A run of another host, or without the owner tag, is left alone. Returns the run ids marked KILLED."""
    killed = []
    for run in _running(mlflow_client, exp_id, model_type, config_hash):
        alive = owner_alive(run.data.tags.get(OWNER_TAG, ""))
        if alive is False:
            mlflow_client.set_tag(run.info.run_id, "error", "its trainer process ended mid-run (killed); "
                                                            "the event was delivered again")
            mlflow_client.set_terminated(run.info.run_id, "KILLED")
            log("train_run_killed", run_id=run.info.run_id, model_type=model_type, config_hash=config_hash)
            killed.append(run.info.run_id)
        elif alive:
            _wait_until_ended(mlflow_client, run.info.run_id)
    return killed


def _running(mlflow_client, exp_id: str, model_type: str, config_hash: str) -> list:
    return mlflow_client.search_runs(
        [exp_id], filter_string=(f"tags.model_type = '{model_type}' and tags.config_hash = '{config_hash}' "
                                 f"and attributes.status = 'RUNNING'"))


def _wait_until_ended(mlflow_client, run_id: str) -> None:
    log("train_wait_for_live_run", run_id=run_id)
    deadline = time.monotonic() + LIVE_RUN_WAIT_SEC
    while mlflow_client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(LIVE_RUN_POLL_SEC)
