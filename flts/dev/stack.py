"""The local full stack: infrastructure, one HTTP process per deployment, and the dispatcher.

`flts up` = flts.dev.infra.start_all (Kafka, S3 server, PostgreSQL, MLflow; every topic of the
routing table) + one functions-framework process per routing.DEPLOYMENTS entry (its own port,
its own env: the three trainers differ only by MODEL_TYPE) + the dispatcher (Kafka → HTTP,
and the ingress the functions use as K_SINK). Everything binds to 127.0.0.1; pid files and
logs live in the state dir next to the infrastructure's (`<state>/run/<name>.pid`,
`<state>/logs/<name>.log`), so `flts down` finds every process it has to stop.

Ports: deployment i of routing.DEPLOYMENTS listens on FLTS_FUNCTION_BASE_PORT + i (default
18100); its replica k (FLTS_REPLICAS, `flts up --replicas`; flts.dev.scaling) on that + k times
the number of deployments; the dispatcher ingress on FLTS_DISPATCHER_PORT (default 18090).

How a deployment is served comes from its function's spec (flts.spec): the spec's server on
functions/<name>/main.py, or, for a request server (infer), the scale-to-zero front door
(flts.dev.frontdoor) on its port, which starts the function on demand.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flts import routing
from flts.dev import REPO, infra, processes, scaling, supervise
from flts.dev.infra.kafka import partition_counts
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

    name: str  # pid file / log name: fn-<deployment>[-<replica>] or dispatcher
    kind: str  # "function" or "dispatcher"
    port: int
    command: list[str]
    env: dict[str, str]
    health_url: str
    url: str
    scale_to_zero: bool = False  # a front door: health_url is its status, the function runs on demand
    deployment: str = ""  # a function process: its deployment, and which replica of it (0-based)
    replica: int = 0


# --------------------------------------------------------------------------- launch
HEALTH_PATH = "/healthz"  # what a healthy function process or the dispatcher answers 200 on
FRONTDOOR_STATUS_PATH = "/_frontdoor/status"  # flts.dev.frontdoor.STATUS_PATH


def behind_frontdoor(spec: FunctionSpec) -> bool:
    """A request server that takes events (infer) scales to zero behind the front door; the gateway
    (it takes none: the stack's way in) always runs."""
    return spec.scaling is Scaling.REQUEST_SERVER and bool(spec.takes)


def function_command(spec: FunctionSpec, port: int, host: str) -> list[str]:
    """The spec's own server on `port`; infer instead gets the scale-to-zero front door there,
    which starts `python -m flts.infer serve` on a private port when a request comes and stops it
    after SCALE_TO_ZERO_GRACE_SECONDS without traffic."""
    if behind_frontdoor(spec):
        return [sys.executable, "-m", "flts.dev.frontdoor", "--host", host, "--port", str(port)]
    return spec.server_command(host, port, source_dir=str(FUNCTIONS_DIR / spec.name))


def plan(cfg: StackConfig, deployments: list[str] | None = None,
         replicas: dict[str, int] | None = None) -> list[Process]:
    """The function processes (routing.DEPLOYMENTS order, each deployment's replicas together) and the
    dispatcher, with ports and env. `replicas`: deployment → processes (default: FLTS_REPLICAS)."""
    chosen = _choose(deployments)
    scale = scaling.ScaleSettings.from_env(os.environ)
    counts = scaling.parse_replicas(scale.replicas) if replicas is None else replicas
    base_env = {**infra.client_env(cfg.infra), "PYTHONUNBUFFERED": "1"}
    planned, targets = [], []
    for index, deployment in enumerate(routing.DEPLOYMENTS):
        if deployment.name not in chosen:
            continue
        for replica in range(counts.get(deployment.name, 1)):
            port = cfg.function_base_port + replica * len(routing.DEPLOYMENTS) + index
            planned.append(_function_process(cfg, deployment, replica, port, base_env))
            if deployment.subscribes:  # the dispatcher delivers to it: a consumer per replica, one group
                targets.append((deployment.name, planned[-1].url))
    delivered = list(dict.fromkeys(name for name, _url in targets))
    dispatcher_env = {
        **infra.client_env(cfg.infra),
        "DISPATCH_TARGETS": ",".join(f"{name}={url}" for name, url in targets),
        # one process per replica here: no more in flight to each than one instance takes (its spec's capacity)
        "DISPATCH_LIMITS": ",".join(f"{name}={routing.deployment(name).spec.capacity.concurrency}" for name in delivered),
        "DISPATCH_INGRESS_HOST": cfg.host,
        "DISPATCH_INGRESS_PORT": str(cfg.dispatcher_port),
        # in the plan, so that `flts status` reads the lag of the groups the dispatcher really uses
        **{name: os.environ[name] for name in GROUP_KNOBS if os.environ.get(name, "").strip()},
        # not read by it: grown topics restart it, so its consumers rebalance over the new partitions
        # at once (kafka-python would notice them at its next metadata refresh, minutes later)
        "FLTS_TOPIC_PARTITIONS": str(scale.partitions),
        "PYTHONUNBUFFERED": "1",
    }
    planned.append(Process(DISPATCHER, "dispatcher", cfg.dispatcher_port, [sys.executable, "-m", "flts.dispatcher"],
                           dispatcher_env, f"http://{cfg.host}:{cfg.dispatcher_port}/readyz", cfg.ingress_url))
    return planned


GROUP_KNOBS = ("DISPATCH_GROUP_PREFIX", "DISPATCH_OFFSET_RESET")


def _function_process(cfg: StackConfig, deployment: routing.Deployment, replica: int, port: int,
                      base_env: dict[str, str]) -> Process:
    url = f"http://{cfg.host}:{port}/"
    # its own S3 account where the server has accounts (flts.dev.infra.s3.GRANTS), and its own
    # ingress path: the dispatcher then knows which delivery an output belongs to (flts.dispatcher.dedup)
    # A function that takes no events (the gateway) starts chains: it posts to the plain ingress `/`.
    sink = f"{cfg.ingress_url}from/{deployment.name}" if deployment.spec.takes else cfg.ingress_url
    env = {**base_env, **infra.function_env(cfg.infra, deployment.function), **deployment.env,
           "FLTS_DEPLOYMENT": deployment.name, "K_SINK": sink}
    # A front door answers its own status route: probing /healthz through it would wake the function.
    frontdoor = behind_frontdoor(deployment.spec)
    health = url.rstrip("/") + (FRONTDOOR_STATUS_PATH if frontdoor else HEALTH_PATH)
    command = function_command(deployment.spec, port, cfg.host)
    name = f"fn-{routing.replica_name(deployment.name, replica)}"
    return Process(name, "function", port, command, env, health, url, scale_to_zero=frontdoor,
                   deployment=deployment.name, replica=replica)


def _choose(deployments: list[str] | None) -> set[str]:
    names = [d.name for d in routing.DEPLOYMENTS]
    if not deployments:
        return set(names)
    unknown = sorted(set(deployments) - set(names))
    if unknown:
        raise ConfigError(f"unknown deployment(s) {unknown} (known: {names})")
    return set(deployments)


# --------------------------------------------------------------------------- processes
# supervisord (flts.dev.supervise) runs each process in its own process group (so a stop
# reaches gunicorn's workers too), with its working directory <state>/<name>, and restarts it
# when it exits. Whatever runs in that folder is ours: `down` and a restart end leftovers there.
def workdir(cfg: StackConfig, name: str) -> Path:
    return cfg.infra.state_dir / name


def running_pid(cfg: StackConfig, name: str) -> int | None:
    """The pid of our process `name` while the supervisor runs it, else None."""
    found = supervise.info(cfg.infra.state_dir, name)
    return found["pid"] if found and found["statename"] in supervise.UP and found["pid"] else None


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A base port with `size` free consecutive ports in 20000-32000 (below the ephemeral range)."""
    import random

    for _ in range(500):
        base = random.randrange(20000, 32000 - size)
        if not any(processes.port_in_use(host, port) for port in range(base, base + size)):
            return base
    raise StackError(f"no {size} free consecutive ports found in 20000-32000")


def start_process(cfg: StackConfig, proc: Process) -> int:
    """Have the supervisor start one process (output appended to its log); return its pid. Keeps a running one."""
    pid = running_pid(cfg, proc.name)
    if pid is not None:
        return pid
    if processes.port_in_use(cfg.host, proc.port):
        knob = "FLTS_DISPATCHER_PORT" if proc.kind == "dispatcher" else "FLTS_FUNCTION_BASE_PORT"
        raise StackError(f"{proc.name}: port {proc.port} is in use by another process; set {knob} "
                         f"to free ports (or stop that process)")
    processes.log_mark(cfg.infra.log_file(proc.name), proc.name)
    try:
        supervise.start(cfg.infra.state_dir, proc.name)
    except supervise.SupervisorError as exc:
        raise StackError(_died(cfg, proc.name, str(exc))) from None
    pid = running_pid(cfg, proc.name)
    if pid is None:
        raise StackError(_died(cfg, proc.name, "it did not start"))
    return pid


def _died(cfg: StackConfig, name: str, why: str) -> str:
    log = cfg.infra.log_file(name)
    return f"{name} exited during startup ({why}); log {log}:\n{processes.log_tail(log)}"


def wait_healthy(cfg: StackConfig, procs: list[Process], timeout: float | None = None) -> None:
    """Probe until every process answers; one that exits (the supervisor restarts it: its pid
    changes) is reported with its log tail. They were started together, so waiting for one after
    the other takes no longer. The dispatcher's /readyz is 503 until its consumers have joined."""
    deadline = time.monotonic() + (cfg.start_timeout if timeout is None else timeout)
    for proc in procs:
        pid = running_pid(cfg, proc.name)
        while not processes.http_ok(proc.health_url, timeout=1.0):
            now = running_pid(cfg, proc.name)
            if now is None or now != pid:
                raise StackError(_died(cfg, proc.name, "the supervisor restarts it" if now else "not running"))
            if time.monotonic() > deadline:
                log = cfg.infra.log_file(proc.name)
                raise StackError(f"{proc.name}: not healthy on {proc.health_url} after "
                                 f"{cfg.start_timeout:.0f}s; log {log}:\n{processes.log_tail(log)}")
            time.sleep(0.3)


def stop_process(cfg: StackConfig, name: str, timeout: float = STOP_TIMEOUT_SEC) -> bool:
    """Have the supervisor stop it: SIGTERM to the process group (gunicorn master and workers),
    SIGKILL after the stop timeout. It stays stopped until started again."""
    return supervise.stop(cfg.infra.state_dir, name)


def restart(cfg: StackConfig, name: str) -> Process:
    """Stop and start one process of the running stack (`flts restart infer`); waits until it is healthy."""
    procs = {p.name: p for p in _load_plan(cfg) or []}
    wanted = name if name in procs else f"fn-{name}"
    if wanted not in procs or supervise.pid(cfg.infra.state_dir) is None:
        known = ", ".join(sorted(p.removeprefix("fn-") for p in procs)) or "none: the stack is not up (flts up)"
        raise StackError(f"no process {name!r} in the running stack (known: {known})")
    stop_process(cfg, wanted)
    start_process(cfg, procs[wanted])
    wait_healthy(cfg, [procs[wanted]])
    return procs[wanted]


# --------------------------------------------------------------------------- up / down / status
def up(cfg: StackConfig | None = None, deployments: list[str] | None = None, with_infra: bool = True,
       echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
       replicas: dict[str, int] | None = None) -> list[Process]:
    """Bring the stack up; returns the plan. `replicas`: deployment → processes (default: FLTS_REPLICAS).

    Idempotent: running processes that match the plan are kept; ones that do not (changed
    command or env, or a deployment left out by `deployments`, or a replica no longer wanted)
    are stopped or restarted. Every process runs under the supervisor, which restarts it when it exits.
    """
    cfg = cfg or StackConfig()
    t0 = time.monotonic()
    scale = scaling.ScaleSettings.from_env(os.environ)
    replicas = scaling.parse_replicas(scale.replicas) if replicas is None else replicas  # fails before any start
    _choose(deployments)
    if with_infra:
        infra.start_all(cfg.infra, topics=[])  # the topics below, with their partitions
    infra.create_topics(cfg.infra, routing.all_topics(), partitions=scale.partitions)
    procs = plan(cfg, deployments, replicas)  # after the start: the env holds the credentials it generates
    for warning in _replica_warnings(cfg, procs):
        echo(f"warning: {warning}")
    functions = [p for p in procs if p.kind == "function"]
    _supervise(cfg, procs, echo)
    # functions first: the dispatcher's first deliveries should find them listening
    for proc in functions:
        echo(_start(cfg, proc))
    wait_healthy(cfg, functions)
    dispatcher = procs[-1]
    echo(_start(cfg, dispatcher))
    wait_healthy(cfg, [dispatcher])
    echo(f"stack: up in {time.monotonic() - t0:.1f}s (state {cfg.infra.state_dir})")
    return procs


def _replica_warnings(cfg: StackConfig, procs: list[Process]) -> list[str]:
    replicas = _replicas_planned(procs)
    scaled = {name: count for name, count in replicas.items() if count > 1}
    if not scaled:
        return []
    topics = sorted({t for name in scaled for t in scaling.topics_of(name)})
    return scaling.replica_warnings(scaled, partition_counts(cfg.infra, topics))


def _replicas_planned(procs: list[Process]) -> dict[str, int]:
    """Deployment → how many of its processes the plan has."""
    counts: dict[str, int] = {}
    for proc in procs:
        if proc.kind == "function":
            counts[proc.deployment] = counts.get(proc.deployment, 0) + 1
    return counts


def _start(cfg: StackConfig, proc: Process) -> str:
    pid = running_pid(cfg, proc.name)
    if pid is not None:
        return f"{proc.name}: already running (pid {pid}) on {proc.url}"
    return f"{proc.name}: starting on {proc.url} (pid {start_process(cfg, proc)})"


def _supervise(cfg: StackConfig, procs: list[Process], echo: Callable[[str], None]) -> None:
    """Save the plan, write the supervisor's config from it and apply it: a process whose command
    or env changed (e.g. the dispatcher's DISPATCH_TARGETS after `--only`) is stopped, and so is a
    function process left out of the plan; the others keep running."""
    _save_plan(cfg, procs)
    programs = [{"name": p.name, "command": p.command, "env": p.env, "workdir": workdir(cfg, p.name),
                 "log": cfg.infra.log_file(p.name)} for p in procs]
    state = cfg.infra.state_dir
    supervise.write_config(state, cfg.plan_file, programs, STOP_TIMEOUT_SEC)
    try:
        if supervise.ensure_running(state, [workdir(cfg, n) for n in [*_known_function_names(cfg), DISPATCHER]]):
            echo(f"supervisor: started (supervisord, pid {supervise.pid(state)})")
        changes = supervise.update(state)
    except supervise.SupervisorError as exc:
        raise StackError(str(exc)) from None
    for name in changes["changed"]:
        echo(f"{name}: stopped (its command or environment changed)")
    for name in changes["removed"]:
        echo(f"{name}: stopped (not in this plan)")


def down(cfg: StackConfig | None = None, with_infra: bool = True) -> list[str]:
    """Stop the dispatcher, then every function process, then the supervisor and the
    infrastructure; returns what ran."""
    cfg = cfg or StackConfig()
    stopped = [DISPATCHER] if stop_process(cfg, DISPATCHER) else []
    for name in _known_function_names(cfg):
        if stop_process(cfg, name):
            stopped.append(name)
    if supervise.shutdown(cfg.infra.state_dir):
        stopped.append(supervise.NAME)
    for name in [*_known_function_names(cfg), DISPATCHER]:
        # what still runs in its folder, even in another session: normally nothing (the front
        # door stops the infer process itself, or it dies with the door), but an orphan of a
        # killed process or supervisor may be left
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
    """The routing table's names, plus any fn-* folder in the state dir (a folder may be all that is left)."""
    names = [f"fn-{d.name}" for d in routing.DEPLOYMENTS]
    if cfg.infra.state_dir.is_dir():
        names += sorted(p.name for p in cfg.infra.state_dir.glob("fn-*") if p.is_dir() and p.name not in names)
    return names


GOOD_STATES = ("healthy", "empty")  # `flts status` exits 3 unless every row is in one of these


def status(cfg: StackConfig | None = None) -> list[dict]:
    """One row per service, process and dead-letter topic: name, kind, pid, url, state, note.

    A process is `healthy`, `UNHEALTHY` (runs, does not answer), `starting`, `RESTARTING` (it
    exited and the supervisor starts it again), `FAILED` (the supervisor gave up), `ORPHANED`
    (not supervised, yet something of it runs or holds its port) or `stopped`. A dead-letter
    topic is `empty` or `<n> dead` (not yet replayed). A front door's row (infer) also has
    `frontdoor` (its GET /_frontdoor/status: backend state, pid, cold starts) and
    `scaled_to_zero` (no function process runs behind it now). A function row names its
    `deployment` and `replica`; a deployment's first row has `replicas` (planned) and
    `replicas_up` (healthy), and with Kafka up, for one that takes events, its consumer group's
    `group`, `consumers` (members now) and `lag` (records not committed yet).
    """
    cfg = cfg or StackConfig()
    services = infra.status(cfg.infra)
    rows = [{"name": r["name"], "kind": "infra", "pid": r["pid"], "url": r["url"],
             "state": "healthy" if r["healthy"] else ("UNHEALTHY" if r["pid"] else "stopped")}
            for r in services]
    supervisor_pid = supervise.pid(cfg.infra.state_dir)
    rows.append({"name": "supervisor", "kind": "supervisor", "pid": supervisor_pid,
                 "url": f"unix://{supervise.socket_path(cfg.infra.state_dir)}",
                 "state": "healthy" if supervisor_pid else "stopped"})
    procs = planned(cfg)
    process_rows = [_process_row(cfg, proc) for proc in procs]
    kafka_up = any(r["name"] == "kafka" and r["state"] == "healthy" for r in rows)
    heads = _count_replicas(procs, process_rows)
    if kafka_up:
        _add_lag(cfg, procs, heads)
    rows += process_rows
    if kafka_up:
        rows += _dead_letter_rows(cfg)
    return rows


def planned(cfg: StackConfig) -> list[Process]:
    """The running stack's plan (saved by `up`), else the one this environment would make."""
    return _load_plan(cfg) or plan(cfg)


def _count_replicas(procs: list[Process], rows: list[dict]) -> dict[str, dict]:
    """Name each function row's deployment and replica; on each deployment's first row, its replicas
    (planned) and replicas_up (healthy). Returns deployment → that first row."""
    heads: dict[str, dict] = {}
    for proc, row in zip(procs, rows, strict=True):
        if proc.kind != "function":
            continue
        row.update(deployment=proc.deployment or proc.name.removeprefix("fn-"), replica=proc.replica)
        head = heads.setdefault(row["deployment"], row)
        head["replicas"] = head.get("replicas", 0) + 1
        head["replicas_up"] = head.get("replicas_up", 0) + (row["state"] == "healthy")
    return heads


def _add_lag(cfg: StackConfig, procs: list[Process], heads: dict[str, dict]) -> None:
    """On each event-taking deployment's first row: its group's lag and members, and a warning when
    it has more replicas than its topics have partitions."""
    for name, state in _group_states(cfg, procs, list(heads)).items():
        head = heads[name]
        if isinstance(state, str):  # why it could not be read
            head["note"] = "; ".join(filter(None, [head.get("note"), state]))
            continue
        head.update(lag=state.lag, consumers=state.members, group=state.group)
        notes = scaling.replica_warnings({name: head["replicas"]}, state.partitions) if head["replicas"] > 1 else []
        if state.members != head["replicas_up"]:  # e.g. the dispatcher is down, or a replica's consumer not joined yet
            notes.append(f"{state.members} consumer(s) in group {state.group} for {head['replicas_up']} replica(s) up")
        head["note"] = "; ".join(filter(None, [head.get("note"), *notes]))


def _group_states(cfg: StackConfig, procs: list[Process], deployments: list[str]) -> dict[str, scaling.GroupState | str]:
    """Deployment → its consumer group's GroupState, or why it could not be read (a status reports, never fails)."""
    from flts.dispatcher.settings import DispatchSettings

    takers = [name for name in deployments if routing.deployment(name).subscribes]
    dispatcher = next((p for p in procs if p.kind == "dispatcher"), None)
    try:
        settings = DispatchSettings.from_env(dispatcher.env if dispatcher else infra.client_env(cfg.infra))
        groups = {f"{settings.group_prefix}{name}": scaling.topics_of(name) for name in takers}
        states = scaling.group_states(infra.kafka_bootstrap(cfg.infra), groups, settings.offset_reset == "earliest")
    except Exception as exc:  # noqa: BLE001 - e.g. the group coordinator not ready yet
        return dict.fromkeys(takers, f"lag unknown: {type(exc).__name__}: {exc}")
    return {name: states[f"{settings.group_prefix}{name}"] for name in takers}


def _process_row(cfg: StackConfig, proc: Process) -> dict:
    found = supervise.info(cfg.infra.state_dir, proc.name)
    supervised = found["statename"] if found else None
    pid = found["pid"] if supervised in supervise.UP and found["pid"] else None
    row = {"name": proc.name, "kind": proc.kind, "pid": pid, "url": proc.url}
    if supervised == "RUNNING" and proc.scale_to_zero:
        door = frontdoor_status(proc)
        row.update(state="healthy" if door else "UNHEALTHY", frontdoor=door,
                   scaled_to_zero=door is not None and door["backend"] == "stopped",
                   note=_frontdoor_note(door) if door else "front door (scale to zero)")
        return row
    # STARTING lasts the supervisor's startsecs (1 s) even for a process that already answers
    if supervised == "RUNNING" or (supervised == "STARTING" and processes.http_ok(proc.health_url)):
        up_for = found["now"] - found["start"]
        return {**row, "state": "healthy" if processes.http_ok(proc.health_url) else "UNHEALTHY",
                "note": f"up {up_for}s" if up_for < 120 else f"up {up_for // 60}min"}
    if supervised in ("STARTING", "BACKOFF"):
        state = "starting" if found["start"] == 0 or supervised == "STARTING" else "RESTARTING"
        return {**row, "state": state, "note": found.get("spawnerr") or "the supervisor is starting it"}
    if supervised == "FATAL":
        return {**row, "state": "FAILED", "note": f"exits at start; the supervisor gave up (log: "
                                                  f"{cfg.infra.log_file(proc.name)}; then `flts restart {proc.name}`)"}
    return {**row, **_unsupervised(cfg, proc)}


def _unsupervised(cfg: StackConfig, proc: Process) -> dict:
    """A process the supervisor does not run: stopped, unless something of it is left (an orphan)."""
    left = processes.pids_in(workdir(cfg, proc.name))
    if left:
        return {"state": "ORPHANED", "pid": left[0],
                "note": f"pid(s) {left} run in its folder without the supervisor: `flts up` ends and restarts them"}
    if processes.port_in_use(cfg.host, proc.port):
        return {"state": "ORPHANED", "note": f"port {proc.port} is held by a process that is not ours"}
    return {"state": "stopped"}


def _dead_letter_rows(cfg: StackConfig) -> list[dict]:
    from flts.dispatcher import deadletters

    bootstrap = infra.kafka_bootstrap(cfg.infra)
    try:
        counts = deadletters.count(bootstrap, [t for t in routing.all_topics() if t.startswith("dlq-")])
    except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
        return [{"name": "dlq-*", "kind": "dlq", "pid": None, "url": bootstrap, "state": "UNKNOWN",
                 "note": f"cannot count dead letters: {type(exc).__name__}: {exc}"}]
    return [{"name": topic, "kind": "dlq", "pid": None, "url": bootstrap,
             "state": "empty" if not c.pending else f"{c.pending} dead", "pending": c.pending, "total": c.total,
             "note": f"replay: flts replay {topic}" if c.pending else (f"{c.total} replayed" if c.total else "")}
            for topic, c in counts.items()]


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
    """The table: REPLICAS (up/planned) and LAG (records the group has not committed) on a deployment's first row."""
    width = max([len("URL"), *(len(r["url"]) for r in rows if r["kind"] != "supervisor")])
    lines = [f"{'NAME':<18} {'KIND':<10} {'STATE':<10} {'REPLICAS':<8} {'LAG':<6} {'PID':<8} {'URL':<{width}}  NOTE"]
    for r in rows:
        replicas = f"{r['replicas_up']}/{r['replicas']}" if "replicas" in r else ""
        line = (f"{r['name']:<18} {r['kind']:<10} {r['state']:<10} {replicas:<8} {str(r.get('lag', '')):<6} "
                f"{str(r['pid'] or '-'):<8} {r['url']:<{width}}")
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
    """Put the CSV(s) into the raw-data bucket and write `flts.dataset.ready` to Kafka; returns the event.

    A file over preprocess's MAX_UPLOAD_BYTES is refused before anything is sent; the files are
    streamed, never read whole into memory.
    """
    from flts import events
    from flts.dispatcher import publish
    from flts.storage import StorageError, store_from_env

    cfg = cfg or StackConfig()
    env = infra.client_env(cfg.infra)
    identifier, keys = upload_keys(csv, test_csv, identifier)
    store = store_from_env(env)
    try:
        store.ensure_bucket(RAW_BUCKET)
        for path, key in keys.items():
            store.put_file(RAW_BUCKET, key, path, "text/csv")
    except StorageError as exc:
        raise StackError(f"cannot upload to {RAW_BUCKET}: {exc}") from None
    ready = events.DatasetReady(bucket=RAW_BUCKET, object_key=keys[csv], identifier=identifier,
                                test_object_key=keys.get(test_csv) if test_csv else None)
    event = events.make_event(events.DATASET_READY, "upload", ready)
    topic, offset = publish(env["KAFKA_BOOTSTRAP_SERVERS"], event)
    return event, topic, offset


def upload_keys(csv: Path, test_csv: Path | None, identifier: str | None) -> tuple[str, dict[Path, str]]:
    """Check an upload before anything connects: the files exist and fit preprocess's
    MAX_UPLOAD_BYTES, the identifier makes a safe key. Returns (identifier, {file: raw-data key})."""
    from flts.preprocess.settings import PreprocessSettings
    from flts.storage import InvalidKey, validate_key

    limit = PreprocessSettings.from_env(os.environ).max_bytes  # what preprocess will accept
    for path in filter(None, (csv, test_csv)):
        if not Path(path).is_file():
            raise StackError(f"no such file: {path}")
        if Path(path).stat().st_size > limit:
            raise StackError(f"{path}: {Path(path).stat().st_size} bytes is over the limit of {limit} "
                             f"(MAX_UPLOAD_BYTES); preprocess would refuse it")
    identifier = identifier or Path(csv).stem
    try:
        return identifier, {path: validate_key(f"{identifier}/{Path(path).name}")
                            for path in filter(None, (csv, test_csv))}
    except InvalidKey as exc:
        raise StackError(f"invalid identifier {identifier!r}: {exc}") from None


# --------------------------------------------------------------------------- upload through the gateway
GATEWAY = "fn-gateway"


class GatewayBusy(StackError):
    """The gateway stored the upload but could not write its event (Kafka down): retry later."""


def deployment_url(cfg: StackConfig, name: str) -> str:
    """Where the local stack serves a deployment (FLTS_FUNCTION_BASE_PORT + its index in the routing table)."""
    index = [d.name for d in routing.DEPLOYMENTS].index(name)
    return f"http://{cfg.host}:{cfg.function_base_port + index}"


def gateway_url(cfg: StackConfig) -> str | None:
    """The running gateway's base URL, or None when it is not part of the stack or does not answer."""
    proc = next((p for p in _load_plan(cfg) or [] if p.name == GATEWAY), None)
    return proc.url.rstrip("/") if proc and processes.http_ok(proc.health_url, timeout=2.0) else None


def gateway_token(cfg: StackConfig) -> str:
    """What the stack's gateway requires: GATEWAY_TOKEN when the shell sets one, else the stack's EVENT_TOKEN."""
    return os.environ.get("GATEWAY_TOKEN", "").strip() or infra.event_token(cfg.infra)


def upload_via_gateway(base: str, token: str, csv: Path, test_csv: Path | None = None,
                       identifier: str | None = None, timeout: float = 300.0) -> dict:
    """POST the test file (if any), then the training file, streamed; returns the gateway's 202 answer."""
    import httpx

    from flts.auth import bearer_header

    identifier = identifier or Path(csv).stem
    headers = {"Content-Type": "text/csv", **bearer_header(token)}
    with httpx.Client(base_url=base, timeout=timeout, trust_env=False, headers=headers) as client:
        query = ""
        if test_csv:
            with open(test_csv, "rb") as fh:
                stored = _gateway_answer(client.post(f"/upload/{identifier}", params={"part": "test"}, content=fh))
            query = f"?test={stored['test']}"
        with open(csv, "rb") as fh:
            return _gateway_answer(client.post(f"/upload/{identifier}{query}", content=fh))


def _gateway_answer(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    if response.status_code == 503:
        raise GatewayBusy(f"gateway: {body.get('error')} (Retry-After {response.headers.get('retry-after')}s)")
    if response.status_code >= 300:
        raise StackError(f"gateway answered {response.status_code}: {body.get('error', body)}")
    return body


# --------------------------------------------------------------------------- CLI
def _cli_up(args) -> int:
    cfg = StackConfig()
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    replicas = scaling.parse_replicas(args.replicas) if args.replicas is not None else None
    try:
        up(cfg, only, with_infra=not args.no_infra, replicas=replicas)
    except StackError as exc:
        raise StackError(f"{exc}\n(what did start keeps running: `flts status`, `flts down`)") from None
    print(format_status(status(cfg)))
    gateway = gateway_url(cfg)
    print("\nupload a dataset:  flts upload data/lte/PobleSec.csv --test data/lte/PobleSec_test.csv\n"
          + (f"status page:       {gateway}/  (uploads need Authorization: Bearer $EVENT_TOKEN)\n" if gateway else "")
          + f"logs:              {cfg.infra.state_dir / 'logs'}")
    return 0


def _cli_down(args) -> int:
    stopped = down(StackConfig(), with_infra=not args.keep_infra)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _cli_status(args) -> int:
    rows = status(StackConfig())
    print(json.dumps(rows, indent=1) if args.json else format_status(rows))
    return 0 if all(r["state"] in GOOD_STATES for r in rows) else 3


def _cli_upload(args) -> int:
    from flts.dev.watch import Watch

    cfg = StackConfig()
    csv, test = Path(args.csv), Path(args.test) if args.test else None
    upload_keys(csv, test, args.identifier)  # a bad file or identifier is refused before anything connects
    gateway = None if args.kafka else gateway_url(cfg)
    watch = None if args.no_wait else Watch(infra.kafka_bootstrap(cfg.infra))  # before the event exists
    if gateway:  # the HTTP way in: streamed to the gateway, which emits flts.dataset.ready
        answer = upload_via_gateway(gateway, gateway_token(cfg), csv, test, args.identifier)
        identifier = answer["identifier"]
        print(f"uploaded {answer['bucket']}/{answer['object_key']}"
              + (f" and {answer['bucket']}/{answer['test_object_key']}" if answer.get("test_object_key") else "")
              + f" through the gateway {gateway}")
        print(f"{'already uploaded: the pipeline ran for these bytes' if answer['duplicate'] else 'started'}: "
              f"id={answer['id']}\nstatus: {answer['status_url']}  (page: {gateway}/)", flush=True)
        if answer["duplicate"] and watch is not None:
            watch.consumer.close(autocommit=False)
            return 0
    else:  # the CloudEvents way in: the objects, then the event written to Kafka
        event, topic, offset = upload(cfg, csv, test, args.identifier)
        data = event.data
        identifier = data["identifier"]
        print(f"uploaded {data['bucket']}/{data['object_key']}"
              + (f" and {data['bucket']}/{data['test_object_key']}" if data.get("test_object_key") else ""))
        print(f"produced {event['type']} id={event['id']} to {topic} (offset {offset})", flush=True)
    if watch is None:
        return 0
    outcome = watch.until_outcome(identifier, args.timeout, lambda line: print(line, flush=True))
    if outcome.ok:
        return 0
    if outcome.dead_letter is not None:
        letter = outcome.dead_letter
        print(f"error: {letter['function']} dead-lettered {letter['event']['type']} into "
              f"{routing.dlq_topic(letter['topic'])}: {letter['error']}\n"
              f"(fix the cause, then: flts replay {routing.dlq_topic(letter['topic'])})", file=sys.stderr)
    else:
        print(f"error: no promotion and no dead letter within {args.timeout:g}s "
              f"(see `flts status` and {cfg.infra.state_dir / 'logs'})", file=sys.stderr)
    return 1


def _cli_restart(args) -> int:
    proc = restart(StackConfig(), args.name)
    print(f"{proc.name}: restarted (pid {running_pid(StackConfig(), proc.name)}) on {proc.url}")
    return 0


def _cli_replay(args) -> int:
    from flts.dispatcher import deadletters
    from flts.events import EventError

    try:
        replayed = deadletters.replay(infra.kafka_bootstrap(StackConfig().infra), args.topic)
    except (EventError, TimeoutError) as exc:
        raise StackError(str(exc)) from None
    for r in replayed:
        print(f"offset {r.offset}: " + (f"skipped, {r.skipped}" if r.skipped else
                                        f"{r.event_type} id={r.event_id} back to {r.topic} (was: {r.error[:120]})"))
    print(f"{args.topic}: {sum(not r.skipped for r in replayed)} replayed, "
          f"{sum(bool(r.skipped) for r in replayed)} skipped" if replayed else f"{args.topic}: nothing to replay")
    return 0


def _guarded(run: Callable) -> Callable:
    """A CLI command whose expected failures print one line (`error: ...`) and exit 1, never a traceback."""
    def wrapper(args) -> int:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its retries are noise: we report the outcome
        try:
            return run(args)
        except (infra.InfraError, StackError, ConfigError, supervise.SupervisorError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            if not type(exc).__module__.startswith("kafka"):
                raise
            message = str(exc).removeprefix(f"{type(exc).__name__}: ") or type(exc).__name__
            print(f"error: Kafka: {message} (is the stack up? `flts status`)", file=sys.stderr)
            return 1
    return wrapper


def add_parser(sub) -> None:
    """`flts up | down | status | upload | restart | replay` (the local full stack)."""
    p = sub.add_parser("up", help="start the local full stack: Kafka, S3, PostgreSQL, MLflow, functions, dispatcher")
    p.add_argument("--only", help="comma-separated deployments to run (default: all), e.g. preprocess,eval")
    p.add_argument("--no-infra", action="store_true", help="use the running infrastructure (only create topics)")
    p.add_argument("--replicas", help="processes per deployment, e.g. train-gru=2,preprocess=2 or train=2 "
                                      "(default: FLTS_REPLICAS; unlisted = 1)")
    p.set_defaults(func=_guarded(_cli_up))
    p = sub.add_parser("down", help="stop the dispatcher, the function processes and the infrastructure")
    p.add_argument("--keep-infra", action="store_true", help="stop only the functions and the dispatcher")
    p.set_defaults(func=_guarded(_cli_down))
    p = sub.add_parser("status", help="what runs where, and whether it is healthy (exit 3 if not)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(_cli_status))
    p = sub.add_parser("upload", help="upload a CSV and start the pipeline: through the gateway when it is up, "
                                      "else into the raw-data bucket and a CloudEvent onto Kafka")
    p.add_argument("csv", help="the training CSV (a timestamp column and numeric columns)")
    p.add_argument("--test", help="a held-out test CSV (default: preprocess splits the training CSV by time)")
    p.add_argument("--identifier", help="dataset identifier (default: the CSV's file name without .csv)")
    p.add_argument("--kafka", action="store_true", help="write the event to Kafka yourself even when the gateway "
                                                        "is up (default: upload through the gateway when it answers)")
    p.add_argument("--no-wait", action="store_true", help="return once the event is on Kafka (default: wait "
                                                          "for the promotion or a dead letter, and say which)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (default: 1800)")
    p.set_defaults(func=_guarded(_cli_upload))
    p = sub.add_parser("restart", help="stop and start one process of the running stack, e.g. `flts restart infer`")
    p.add_argument("name", help="a deployment (preprocess, train-gru, eval, infer, ...), a replica of one "
                                "(train-gru-2) or `dispatcher`")
    p.set_defaults(func=_guarded(_cli_restart))
    p = sub.add_parser("replay", help="put the pending dead letters of a dlq-<topic> back onto their topic")
    p.add_argument("topic", help="the dead-letter topic, e.g. dlq-dataset-ready (`flts status` lists them)")
    p.set_defaults(func=_guarded(_cli_replay))
