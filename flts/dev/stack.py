"""The local full stack: infrastructure, one HTTP process per deployment, and the dispatcher.

`flts up` = flts.dev.infra.start_all (Kafka, S3 server, PostgreSQL, MLflow; every topic of the
routing table) + one functions-framework process per routing.DEPLOYMENTS entry (its own port,
its own env: the three trainers differ only by MODEL_TYPE) + the dispatcher (Kafka → HTTP,
and the ingress the functions use as K_SINK). Everything binds to 127.0.0.1; pid files and
logs live in the state dir next to the infrastructure's (`<state>/run/<name>.pid`,
`<state>/logs/<name>.log`), so `flts down` finds every process it has to stop.

Ports: deployment i of routing.DEPLOYMENTS listens on FLTS_FUNCTION_BASE_PORT + i (default
18100); the dispatcher ingress on FLTS_DISPATCHER_PORT (default 18090).

How a deployment is served comes from its function's spec (flts.spec): the spec's server on
functions/<name>/main.py, or, for a request server (infer), the scale-to-zero front door
(flts.dev.frontdoor) on its port, which starts the function on demand.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flts import routing
from flts.dev import REPO, infra, processes
from flts.settings import ConfigError
from flts.spec import FunctionSpec, Scaling

FUNCTIONS_DIR = REPO / "functions"
DISPATCHER = "dispatcher"
START_TIMEOUT_SEC = 180.0  # six Python processes importing torch/mlflow on a small machine
STOP_TIMEOUT_SEC = 15.0


class StackError(RuntimeError):
    """A function process or the dispatcher could not be planned, started or stopped."""


# --------------------------------------------------------------------------- config
def _port_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a port number, got {raw!r}")
    return int(raw)


@dataclass
class StackConfig:
    """Where the stack's processes listen; the infrastructure part is flts.dev.infra's config."""

    infra: infra.InfraConfig = field(default_factory=infra.InfraConfig)
    function_base_port: int = field(default_factory=lambda: _port_env("FLTS_FUNCTION_BASE_PORT", 18100))
    dispatcher_port: int = field(default_factory=lambda: _port_env("FLTS_DISPATCHER_PORT", 18090))
    host: str = "127.0.0.1"
    start_timeout: float = START_TIMEOUT_SEC

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.dispatcher_port}/"

    @property
    def plan_file(self) -> Path:
        return self.infra.state_dir / "run" / "stack.json"


@dataclass
class Process:
    """One process of the stack: what it runs, where it listens, how to tell it is healthy."""

    name: str  # pid file / log name: fn-<deployment> or dispatcher
    kind: str  # "function" or "dispatcher"
    port: int
    command: list[str]
    env: dict[str, str]
    health_url: str
    url: str
    scale_to_zero: bool = False  # a front door: health_url is its status, the function runs on demand


# --------------------------------------------------------------------------- launch
HEALTH_PATH = "/healthz"  # what a healthy function process or the dispatcher answers 200 on
FRONTDOOR_STATUS_PATH = "/_frontdoor/status"  # flts.dev.frontdoor.STATUS_PATH


def function_command(spec: FunctionSpec, port: int, host: str) -> list[str]:
    """The spec's own server on `port`; a request server (infer) instead gets the scale-to-zero
    front door there, which starts `python -m flts.infer serve` on a private port when a request
    comes and stops it after SCALE_TO_ZERO_GRACE_SECONDS without traffic."""
    if spec.scaling is Scaling.REQUEST_SERVER:
        return [sys.executable, "-m", "flts.dev.frontdoor", "--host", host, "--port", str(port)]
    return spec.server_command(host, port, source_dir=str(FUNCTIONS_DIR / spec.name))


def plan(cfg: StackConfig, deployments: list[str] | None = None) -> list[Process]:
    """The function processes (routing.DEPLOYMENTS order) and the dispatcher, with ports and env."""
    chosen = _choose(deployments)
    base_env = {**infra.client_env(cfg.infra), "K_SINK": cfg.ingress_url, "PYTHONUNBUFFERED": "1"}
    planned, targets = [], {}
    for index, deployment in enumerate(routing.DEPLOYMENTS):
        if deployment.name not in chosen:
            continue
        port = cfg.function_base_port + index
        url = f"http://{cfg.host}:{port}/"
        env = {**base_env, **deployment.env, "FLTS_DEPLOYMENT": deployment.name}
        # A front door answers its own status route: probing /healthz through it would wake the function.
        frontdoor = deployment.spec.scaling is Scaling.REQUEST_SERVER
        health = url.rstrip("/") + (FRONTDOOR_STATUS_PATH if frontdoor else HEALTH_PATH)
        command = function_command(deployment.spec, port, cfg.host)
        planned.append(Process(f"fn-{deployment.name}", "function", port, command, env, health, url,
                               scale_to_zero=frontdoor))
        targets[deployment.name] = url
    dispatcher_env = {
        **infra.client_env(cfg.infra),
        "DISPATCH_TARGETS": ",".join(f"{name}={url}" for name, url in targets.items()),
        "DISPATCH_INGRESS_HOST": cfg.host,
        "DISPATCH_INGRESS_PORT": str(cfg.dispatcher_port),
        "PYTHONUNBUFFERED": "1",
    }
    planned.append(Process(DISPATCHER, "dispatcher", cfg.dispatcher_port, [sys.executable, "-m", "flts.dispatcher"],
                           dispatcher_env, f"http://{cfg.host}:{cfg.dispatcher_port}/readyz", cfg.ingress_url))
    return planned


def _choose(deployments: list[str] | None) -> set[str]:
    names = [d.name for d in routing.DEPLOYMENTS]
    if not deployments:
        return set(names)
    unknown = sorted(set(deployments) - set(names))
    if unknown:
        raise ConfigError(f"unknown deployment(s) {unknown} (known: {names})")
    return set(deployments)


# --------------------------------------------------------------------------- processes
# Each process runs in its own session (so a stop reaches gunicorn's workers too), with its
# working directory <state>/<name>: a pid counts as ours only if it still runs there, so a
# stale pid file can never make `flts down` signal somebody else's process.
def workdir(cfg: StackConfig, name: str) -> Path:
    return cfg.infra.state_dir / name


def running_pid(cfg: StackConfig, name: str) -> int | None:
    """The pid of our running process `name`, or None (a stale pid file is removed)."""
    return processes.owned_pid(cfg.infra.pid_file(name), workdir(cfg, name))


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A base port with `size` free consecutive ports in 20000-32000 (below the ephemeral range)."""
    import random

    for _ in range(500):
        base = random.randrange(20000, 32000 - size)
        if not any(processes.port_in_use(host, port) for port in range(base, base + size)):
            return base
    raise StackError(f"no {size} free consecutive ports found in 20000-32000")


def start_process(cfg: StackConfig, proc: Process) -> int:
    """Spawn one process (own session, output appended to its log); return its pid. Keeps a running one."""
    pid = running_pid(cfg, proc.name)
    if pid is not None:
        return pid
    if processes.port_in_use(cfg.host, proc.port):
        knob = "FLTS_DISPATCHER_PORT" if proc.kind == "dispatcher" else "FLTS_FUNCTION_BASE_PORT"
        raise StackError(f"{proc.name}: port {proc.port} is in use by another process; set {knob} "
                         f"to free ports (or stop that process)")
    log = cfg.infra.log_file(proc.name)
    processes.log_mark(log, proc.name)
    popen = processes.spawn(proc.command, env=proc.env, cwd=workdir(cfg, proc.name), log_path=log)
    processes.write_pid_file(cfg.infra.pid_file(proc.name), popen.pid, proc.port)
    return popen.pid


def wait_healthy(cfg: StackConfig, procs: list[Process], timeout: float | None = None) -> None:
    """Probe until every process answers; a process that dies is reported with its log tail.

    They were started together, so waiting for one after the other takes no longer.
    """
    deadline = time.monotonic() + (cfg.start_timeout if timeout is None else timeout)
    for proc in procs:
        log, pid = cfg.infra.log_file(proc.name), running_pid(cfg, proc.name)
        if pid is None:
            raise StackError(f"{proc.name} exited during startup; log {log}:\n{processes.log_tail(log)}")
        # the dispatcher's /readyz is 503 until its consumers have joined
        healthy = functools.partial(processes.http_ok, proc.health_url, timeout=1.0)
        try:
            processes.wait_until(healthy, deadline - time.monotonic(), proc=pid, what=proc.name, log_path=log,
                                 interval=0.3)
        except processes.NotReady as exc:
            raise StackError(str(exc)) from None


def stop_process(cfg: StackConfig, name: str, timeout: float = STOP_TIMEOUT_SEC) -> bool:
    """SIGTERM the process group (gunicorn master and workers), SIGKILL what is left after `timeout`."""
    pid = running_pid(cfg, name)
    if pid is None:
        return False
    processes.stop_group(pid, timeout, what=name)
    cfg.infra.pid_file(name).unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- up / down / status
def up(cfg: StackConfig | None = None, deployments: list[str] | None = None, with_infra: bool = True,
       echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> list[Process]:
    """Bring the stack up; returns the plan.

    Idempotent: running processes that match the plan are kept; ones that do not (changed
    command or env, or a deployment left out by `deployments`) are stopped or restarted.
    """
    cfg = cfg or StackConfig()
    t0 = time.monotonic()
    if with_infra:
        infra.start_all(cfg.infra, topics=routing.all_topics())
    else:
        infra.create_topics(cfg.infra, routing.all_topics())
    procs = plan(cfg, deployments)
    functions = [p for p in procs if p.kind == "function"]
    _retire_changed(cfg, procs, echo)
    # functions first: the dispatcher's first deliveries should find them listening
    for proc in functions:
        echo(_start(cfg, proc))
    wait_healthy(cfg, functions)
    dispatcher = procs[-1]
    echo(_start(cfg, dispatcher))
    wait_healthy(cfg, [dispatcher])
    _save_plan(cfg, procs)
    echo(f"stack: up in {time.monotonic() - t0:.1f}s (state {cfg.infra.state_dir})")
    return procs


def _start(cfg: StackConfig, proc: Process) -> str:
    pid = running_pid(cfg, proc.name)
    if pid is not None:
        return f"{proc.name}: already running (pid {pid}) on {proc.url}"
    return f"{proc.name}: starting on {proc.url} (pid {start_process(cfg, proc)})"


def _retire_changed(cfg: StackConfig, procs: list[Process], echo: Callable[[str], None]) -> None:
    """Stop what no longer matches the plan: a process whose command or env changed (e.g. the
    dispatcher's DISPATCH_TARGETS after `--only`), and function processes left out of it."""
    previous = {p.name: p for p in _load_plan(cfg) or []}
    wanted = {p.name: p for p in procs}
    for name in [*_known_function_names(cfg), DISPATCHER]:
        old, new = previous.get(name), wanted.get(name)
        changed = new is not None and old is not None and (old.command, old.env) != (new.command, new.env)
        if (new is None or changed) and stop_process(cfg, name):
            echo(f"{name}: stopped ({'its command or environment changed' if changed else 'not in this plan'})")


def down(cfg: StackConfig | None = None, with_infra: bool = True) -> list[str]:
    """Stop the dispatcher, then every function process, then the infrastructure; returns what ran."""
    cfg = cfg or StackConfig()
    stopped = [DISPATCHER] if stop_process(cfg, DISPATCHER) else []
    for name in _known_function_names(cfg):
        if stop_process(cfg, name):
            stopped.append(name)
        # what still runs in its folder, even in another session: normally nothing (the front
        # door stops the infer process itself, or it dies with the door)
        leftovers = processes.pids_in(workdir(cfg, name))
        if leftovers:
            processes.stop_pids(leftovers, STOP_TIMEOUT_SEC)
            if name not in stopped:
                stopped.append(name)
    if with_infra:
        stopped += infra.stop_all(cfg.infra)
    cfg.plan_file.unlink(missing_ok=True)
    return stopped


def _known_function_names(cfg: StackConfig) -> list[str]:
    """Every fn-* pid file, plus the routing table's names (a pid file may be all that is left)."""
    names = [f"fn-{d.name}" for d in routing.DEPLOYMENTS]
    run = cfg.infra.state_dir / "run"
    if run.is_dir():
        names += sorted(p.stem for p in run.glob("fn-*.pid") if p.stem not in names)
    return names


def status(cfg: StackConfig | None = None) -> list[dict]:
    """One row per service and process: name, kind, pid, url, state (healthy/UNHEALTHY/stopped).

    A front door's row (infer) also has `frontdoor` (its GET /_frontdoor/status: backend
    state, pid, cold starts), `scaled_to_zero` (no function process runs behind it now) and
    a readable `note`.
    """
    cfg = cfg or StackConfig()
    rows = [{"name": r["name"], "kind": "infra", "pid": r["pid"], "url": r["url"],
             "state": "healthy" if r["healthy"] else ("UNHEALTHY" if r["pid"] else "stopped")}
            for r in infra.status(cfg.infra)]
    for proc in _load_plan(cfg) or plan(cfg):
        pid = running_pid(cfg, proc.name)
        door = frontdoor_status(proc) if proc.scale_to_zero and pid is not None else None
        if pid is None:
            state = "stopped"
        elif proc.scale_to_zero:
            state = "healthy" if door is not None else "UNHEALTHY"
        else:
            state = "healthy" if processes.http_ok(proc.health_url) else "UNHEALTHY"
        row = {"name": proc.name, "kind": proc.kind, "pid": pid, "url": proc.url, "state": state}
        if proc.scale_to_zero:
            row.update(frontdoor=door, scaled_to_zero=door is not None and door["backend"] == "stopped",
                       note=_frontdoor_note(door) if door else "front door (scale to zero)")
        rows.append(row)
    return rows


def frontdoor_status(proc: Process, timeout: float = 2.0) -> dict | None:
    """A front door's own view (it answers without waking the function), or None if it does not answer."""
    try:
        code, text = processes.http_get(proc.health_url, timeout)
        body = json.loads(text) if 200 <= code < 300 else None
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and "backend" in body else None


def _frontdoor_note(door: dict) -> str:
    starts = f"{door['starts']} cold start(s)"
    if door["cold_starts"]:
        starts += f", last {door['cold_starts'][-1]:.2f}s"
    if door["backend"] == "stopped":
        return f"front door; infer scaled to zero (grace {door['grace_seconds']:g}s; {starts})"
    if door["backend"] == "running":
        return (f"front door; infer running, pid {door['pid']} on :{door['backend_port']}, idle "
                f"{door['idle_seconds']:.0f}s of {door['grace_seconds']:g}s grace ({starts})")
    return f"front door; infer {door['backend']} ({starts})"


def format_status(rows: list[dict]) -> str:
    width = max([len("URL"), *(len(r["url"]) for r in rows)])
    lines = [f"{'NAME':<18} {'KIND':<10} {'STATE':<10} {'PID':<8} {'URL':<{width}}  NOTE".rstrip()]
    for r in rows:
        line = f"{r['name']:<18} {r['kind']:<10} {r['state']:<10} {str(r['pid'] or '-'):<8} {r['url']:<{width}}"
        lines.append(f"{line}  {r.get('note') or ''}".rstrip())
    return "\n".join(lines)


def _save_plan(cfg: StackConfig, procs: list[Process]) -> None:
    # the env holds credentials: the file is 0600 like flts.dev.infra's credentials.json
    fd = os.open(cfg.plan_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump([asdict(p) for p in procs], fh, indent=1)


def _load_plan(cfg: StackConfig) -> list[Process] | None:
    try:
        return [Process(**p) for p in json.loads(cfg.plan_file.read_text())]
    except (OSError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- upload
RAW_BUCKET = "raw-data"


def upload(cfg: StackConfig | None, csv: Path, test_csv: Path | None = None, identifier: str | None = None):
    """Put the CSV(s) into the raw-data bucket and write `flts.dataset.ready` to Kafka; returns the event."""
    from flts import events
    from flts.dispatcher import publish
    from flts.storage import store_from_env, validate_key

    cfg = cfg or StackConfig()
    env = infra.client_env(cfg.infra)
    for path in filter(None, (csv, test_csv)):
        if not Path(path).is_file():
            raise StackError(f"no such file: {path}")
    identifier = identifier or Path(csv).stem
    keys = {path: validate_key(f"{identifier}/{Path(path).name}") for path in filter(None, (csv, test_csv))}
    store = store_from_env(env)
    store.ensure_bucket(RAW_BUCKET)
    for path, key in keys.items():
        store.put_bytes(RAW_BUCKET, key, Path(path).read_bytes(), "text/csv")
    ready = events.DatasetReady(bucket=RAW_BUCKET, object_key=keys[csv], identifier=identifier,
                                test_object_key=keys.get(test_csv) if test_csv else None)
    event = events.make_event(events.DATASET_READY, "upload", ready)
    topic, offset = publish(env["KAFKA_BOOTSTRAP_SERVERS"], event)
    return event, topic, offset


# --------------------------------------------------------------------------- CLI
def _cli_up(args) -> int:
    cfg = StackConfig()
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        up(cfg, only, with_infra=not args.no_infra)
    except StackError as exc:
        raise StackError(f"{exc}\n(what did start keeps running: `flts status`, `flts down`)") from None
    print(format_status(status(cfg)))
    print(f"\nupload a dataset:  flts upload data/lte/PobleSec.csv --test data/lte/PobleSec_test.csv\n"
          f"logs:              {cfg.infra.state_dir / 'logs'}")
    return 0


def _cli_down(args) -> int:
    stopped = down(StackConfig(), with_infra=not args.keep_infra)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _cli_status(args) -> int:
    rows = status(StackConfig())
    print(json.dumps(rows, indent=1) if args.json else format_status(rows))
    return 0 if all(r["state"] == "healthy" for r in rows) else 3


def _cli_upload(args) -> int:
    event, topic, offset = upload(StackConfig(), Path(args.csv), Path(args.test) if args.test else None,
                                  args.identifier)
    data = event.data
    print(f"uploaded {data['bucket']}/{data['object_key']}"
          + (f" and {data['bucket']}/{data['test_object_key']}" if data.get("test_object_key") else ""))
    print(f"produced {event['type']} id={event['id']} to {topic} (offset {offset})")
    return 0


def _guarded(run: Callable) -> Callable:
    def wrapper(args) -> int:
        try:
            return run(args)
        except (infra.InfraError, StackError, ConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return wrapper


def add_parser(sub) -> None:
    """`flts up | down | status | upload` (the local full stack)."""
    p = sub.add_parser("up", help="start the local full stack: Kafka, S3, PostgreSQL, MLflow, functions, dispatcher")
    p.add_argument("--only", help="comma-separated deployments to run (default: all), e.g. preprocess,eval")
    p.add_argument("--no-infra", action="store_true", help="use the running infrastructure (only create topics)")
    p.set_defaults(func=_guarded(_cli_up))
    p = sub.add_parser("down", help="stop the dispatcher, the function processes and the infrastructure")
    p.add_argument("--keep-infra", action="store_true", help="stop only the functions and the dispatcher")
    p.set_defaults(func=_guarded(_cli_down))
    p = sub.add_parser("status", help="what runs where, and whether it is healthy (exit 3 if not)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(_cli_status))
    p = sub.add_parser("upload", help="put a CSV into the raw-data bucket and start the pipeline through Kafka")
    p.add_argument("csv", help="the training CSV (a timestamp column and numeric columns)")
    p.add_argument("--test", help="a held-out test CSV (default: preprocess splits the training CSV by time)")
    p.add_argument("--identifier", help="dataset identifier (default: the CSV's file name without .csv)")
    p.set_defaults(func=_guarded(_cli_upload))
