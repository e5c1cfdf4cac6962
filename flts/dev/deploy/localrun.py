"""Run the Knative Services as their manifests say, as local processes, and deliver events as
their Triggers say: what `kubectl apply` would start on a fresh cluster, without one.

    with LocalCluster(objects, workdir, stand_ins=..., secrets=...) as cluster:
        cluster.start("infer")              # the container: command, env, port, as written
        cluster.wait_ready("infer")         # its readinessProbe, within its progress deadline
        cluster.publish(event)              # into the Broker: each matching Trigger delivers it
        cluster.wait_for(lambda: ...)       # received events, delivery attempts

With `identity` (a kube-apiserver that signs service-account tokens), Eventing's sender identity
(authentication-oidc) is played too: each Trigger's deliveries carry a token signed for its
service account and its subscriber's audience, each SinkBinding's subject finds a token for the
Broker where EVENT_TOKEN_FILE says, and the Broker refuses a POST without a valid one from a
sender its EventPolicy names.

Taken from the objects: each Service's command, its env (values, ConfigMap and Secret keys),
K_SINK from its SinkBinding (the Broker: here an HTTP server of this module), Knative's
runtime contract (K_SERVICE, K_CONFIGURATION, K_REVISION, PORT), its probes (path, period,
failure threshold) and progress deadline; each Trigger's filter, subscriber and delivery
(timeout, retries, exponential backoff). From the image (functions/<f>/Dockerfile): its ENV,
and where its paths come from (the COPY lines: /app/index.py is template/flts-python/index.py).

What differs from a cluster, on purpose: the container port is mapped to a free local port
(the command's --listen), python is this interpreter, and the ConfigMap's cluster endpoints
are replaced by local stand-ins (`stand_ins`). The environment is exactly that, nothing
inherited from the caller's.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flts.dev import REPO, processes
from flts.dev.deploy.knative import (
    SINK_BINDING_API,
    broker_audience,
    broker_senders,
    oidc_identity,
    trigger_identity,
)
from flts.dev.deploy.validate import DEFAULT_PROGRESS_DEADLINE, PROGRESS_DEADLINE, duration_seconds
from flts.dev.testing import free_port

LOCAL_READY_CAP = 90.0  # seconds: a local process that is not ready by then never will be
RETRIED = {404, 408, 409, 429}  # and every 5xx: what Knative's dispatchers retry


# --------------------------------------------------------------------------- the image
@dataclass
class Image:
    """What a generated Dockerfile says about its runtime: ENV, WORKDIR, image path → repository path."""

    env: dict[str, str]
    paths: dict[str, str]
    workdir: str

    def local(self, path: str) -> str:
        """The repository file or folder an image path comes from (the longest COPY destination)."""
        for dest in sorted(self.paths, key=len, reverse=True):
            folder = dest.rstrip("/")
            if path == folder or path.startswith(folder + "/"):
                return str(REPO / self.paths[dest]) + path[len(folder):]
        return path


def read_image(dockerfile: str) -> Image:
    """ENV and COPY (from the build context) of the final stage, WORKDIR-relative paths resolved."""
    text = dockerfile.replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    env, paths, workdir = {}, {}, "/"
    for line in final.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["WORKDIR"]:
            workdir = str(Path(workdir, words[1]))
        elif words[:1] == ["ENV"]:
            env.update(word.split("=", 1) for word in words[1:])
        elif words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words) and len(words) == 3:
            source, dest = words[1], words[2]
            dest = str(Path(workdir, dest)) + ("/" if dest.endswith("/") else "")
            paths[dest] = source
    return Image(env, paths, workdir)


def image_of(service: dict) -> Image:
    """The image a Service runs, read from functions/<folder>/Dockerfile (flts-<folder> in its name)."""
    reference = service["spec"]["template"]["spec"]["containers"][0]["image"]
    folder = re.search(r"/flts-([a-z0-9-]+):", reference).group(1)
    return read_image((REPO / "functions" / folder / "Dockerfile").read_text())


# --------------------------------------------------------------------------- a Service's container
@dataclass
class Probe:
    path: str
    period: float
    failure_threshold: int


@dataclass
class Container:
    service: str
    command: list[str]
    env: dict[str, str]
    cwd: str
    port: int
    readiness: Probe
    liveness: Probe
    progress_deadline: float


def _probe(spec: dict) -> Probe:
    return Probe(spec["httpGet"]["path"], spec.get("periodSeconds", 10), spec.get("failureThreshold", 3))


def _env_value(entry: dict, config: dict[str, str], secrets: dict[str, str]) -> str:
    source = entry.get("valueFrom", {})
    if "configMapKeyRef" in source:
        return config[source["configMapKeyRef"]["key"]]
    if "secretKeyRef" in source:
        return secrets.get(source["secretKeyRef"]["key"], "")
    return entry.get("value", "")


def container_of(service: dict, config: dict[str, str], secrets: dict[str, str], extra_env: dict[str, str],
                 port: int) -> Container:
    """The process a Service's revision runs: `extra_env` is what the platform adds (K_SINK, stand-ins)."""
    name, template = service["metadata"]["name"], service["spec"]["template"]
    spec = template["spec"]["containers"][0]
    image = image_of(service)
    command = [sys.executable if word == "python" else image.local(word) for word in spec["command"]]
    command = [f"127.0.0.1:{port}" if word.endswith(f":{spec['ports'][0]['containerPort']}") else word
               for word in command]
    env = {**image.env, **{e["name"]: _env_value(e, config, secrets) for e in spec.get("env", [])},
           "PORT": str(port), "K_SERVICE": name, "K_CONFIGURATION": name, "K_REVISION": f"{name}-00001",
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **extra_env}
    deadline = template.get("metadata", {}).get("annotations", {}).get(PROGRESS_DEADLINE)
    return Container(name, command, env, image.local(spec.get("workingDir") or image.workdir), port,
                     _probe(spec["readinessProbe"]), _probe(spec["livenessProbe"]),
                     duration_seconds(deadline) if deadline else DEFAULT_PROGRESS_DEADLINE)


# --------------------------------------------------------------------------- the Broker
@dataclass
class Attempt:
    trigger: str
    subscriber: str
    event_id: str
    status: int | None  # None: no answer (refused, reset, timed out)
    error: str = ""


@dataclass
class Broker:
    """Takes events (K_SINK, publish) and delivers each to the subscribers of matching Triggers."""

    triggers: list[dict]
    address: Callable[[str], str | None]  # Service name → its local URL (None: not started)
    received: list = field(default_factory=list)
    recorded: dict[str, list] = field(default_factory=dict)  # KafkaSink name → events
    attempts: list[Attempt] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    identity: SenderIdentity | None = None

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="broker")
        self._lock = threading.Lock()

    def take(self, event) -> None:
        with self._lock:
            self.received.append(event)
        for trigger in self.triggers:
            wanted = trigger["spec"].get("filter", {}).get("attributes", {})
            if all(event.get(key) == value for key, value in wanted.items()):
                self._pool.submit(self._deliver, trigger, event)

    def _deliver(self, trigger: dict, event) -> None:
        ref, delivery = trigger["spec"]["subscriber"]["ref"], trigger["spec"].get("delivery", {})
        if ref["kind"] == "KafkaSink":
            with self._lock:
                self.recorded.setdefault(ref["name"], []).append(event)
            return
        timeout = duration_seconds(delivery["timeout"]) if "timeout" in delivery else None
        backoff = duration_seconds(delivery.get("backoffDelay", "PT1S")) or 1
        for attempt in range(delivery.get("retry", 0) + 1):
            if self.closed.wait(backoff * 2 ** (attempt - 1) if attempt else 0):
                return
            headers = self.identity.delivery_header(trigger) if self.identity else {}
            status, error = self._post(self.address(ref["name"]), event, timeout, headers)
            with self._lock:
                self.attempts.append(Attempt(trigger["metadata"]["name"], ref["name"], event["id"], status, error))
            if status is not None and status < 500 and status not in RETRIED:
                return  # delivered, or refused for good (a 400 is a dead letter at once)

    @staticmethod
    def _post(url: str | None, event, timeout: float | None, extra: dict[str, str]) -> tuple[int | None, str]:
        import httpx
        from cloudevents.conversion import to_binary

        if url is None:
            return None, "no instance"
        headers, body = to_binary(event)
        try:
            return httpx.post(url, headers={**headers, **extra}, content=body, timeout=timeout).status_code, ""
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _broker_handler(broker: Broker) -> type[BaseHTTPRequestHandler]:
    class Ingress(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            from cloudevents.http import from_http

            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            denied = broker.identity.broker_gate.refusal(self.headers.get("authorization")) if broker.identity else None
            if denied:  # as the Broker ingress with authentication-oidc
                self.send_error(denied.status, denied.reason)
                return
            try:
                event = from_http(dict(self.headers), body)
            except Exception as exc:  # noqa: BLE001 - a bad event is the sender's problem: 400
                self.send_error(400, str(exc))
                return
            broker.take(event)
            self.send_response(202)  # as the Broker ingress: accepted, delivered later
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet
            pass

    return Ingress


# --------------------------------------------------------------------------- sender identity
class SenderIdentity:
    """Eventing's authentication-oidc, with tokens a real API server signs (upstream.KubeAPIServer)."""

    def __init__(self, api, namespace: str, workdir: Path):
        from flts.auth import EventAuthSettings, EventGate

        self.api, self.namespace, self.workdir = api, namespace, workdir
        self.account = api.service_account_dir(workdir / "serviceaccount", namespace)  # the pods' own
        self.broker_gate = EventGate(EventAuthSettings(  # with its EventPolicy: only the rendered senders
            oidc_audience=broker_audience(namespace), oidc_senders=tuple(oidc_identity(*s) for s in broker_senders()),
            oidc_issuer_url=api.url, oidc_account_dir=str(self.account)))
        self._tokens: dict[tuple[str, str], str] = {}

    def _token(self, account: str, audience: str) -> str:
        if (account, audience) not in self._tokens:
            self._tokens[(account, audience)] = self.api.token(self.namespace, account, audience)
        return self._tokens[(account, audience)]

    def delivery_header(self, trigger: dict) -> dict[str, str]:
        """What the Trigger's dispatcher adds: a token for its subscriber's audience, when it names one."""
        audience = trigger["spec"]["subscriber"].get("audience")
        account = trigger_identity(trigger["metadata"]["name"])
        return {"Authorization": f"Bearer {self._token(account, audience)}"} if audience else {}

    def pod_env(self, name: str, env: dict[str, str], binding: str | None) -> dict[str, str]:
        """Where a pod finds its service account, and its SinkBinding's token for the Broker."""
        local = {"EVENT_OIDC_ISSUER_URL": self.api.url, "EVENT_OIDC_ACCOUNT_DIR": str(self.account)}
        if binding and env.get("EVENT_TOKEN_FILE"):
            mounted = self.workdir / "oidc" / name / "token"
            mounted.parent.mkdir(parents=True, exist_ok=True)
            mounted.write_text(self._token(oidc_identity(SINK_BINDING_API, binding), broker_audience(self.namespace)))
            local["EVENT_TOKEN_FILE"] = str(mounted)
        return local


# --------------------------------------------------------------------------- the cluster
class NotReady(processes.NotReady):
    """A Service's revision would never turn Ready."""


class LocalCluster:
    def __init__(self, objects: list[dict], workdir: Path, *, stand_ins: dict[str, str],
                 secrets: dict[str, str] | None = None, identity=None, namespace: str = "flts"):
        self.objects, self.workdir = objects, Path(workdir)
        self.stand_ins, self.secrets = stand_ins, secrets or {}
        self.services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
        config = next((o for o in objects if o["kind"] == "ConfigMap"), {"data": {}})["data"]
        self.config = {k: stand_ins.get(k, v) for k, v in config.items()}
        self.containers: dict[str, Container] = {}
        self.ready_seconds: dict[str, float] = {}  # per Service: from its start until its probe passed
        self._procs: dict[str, subprocess.Popen] = {}
        self.identity = SenderIdentity(identity, namespace, self.workdir) if identity is not None else None
        self.broker = Broker([o for o in objects if o["kind"] == "Trigger"], self.url, identity=self.identity)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _broker_handler(self.broker))
        self.broker_url = f"http://127.0.0.1:{self._server.server_port}/"

    def __enter__(self) -> LocalCluster:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="broker-ingress").start()
        return self

    def __exit__(self, *exc) -> None:
        self.broker.closed.set()  # no new attempt; the ones in flight end with their subscriber
        for name in list(self._procs):
            self.stop(name)
        self.broker.close()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ Services
    def _binding(self, name: str) -> str | None:
        """The SinkBinding whose subject the Service is: it sets K_SINK (the Broker)."""
        return next((o["metadata"]["name"] for o in self.objects
                     if o["kind"] == "SinkBinding" and o["spec"]["subject"]["name"] == name), None)

    def start(self, name: str) -> Container:
        binding = self._binding(name)
        extra = {**({"K_SINK": self.broker_url} if binding else {}),
                 **{k: v for k, v in self.stand_ins.items() if k not in self.config}}
        container = container_of(self.services[name], self.config, self.secrets, extra, free_port())
        if self.identity:
            container.env.update(self.identity.pod_env(name, container.env, binding))
        log = self.workdir / "logs" / f"{name}.log"
        processes.log_mark(log, name)
        # The working directory is the image's copy of the function folder, not the repository's:
        # what the process writes there (MLflow's ./mlruns) stays in the container.
        cwd = self.workdir / "containers" / name
        shutil.copytree(container.cwd, cwd, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "mlruns"))
        # `env -i`: the process sees exactly the container's environment, nothing of ours.
        command = ["env", "-i", *(f"{k}={v}" for k, v in container.env.items()), *container.command]
        self._procs[name] = processes.spawn(command, cwd=cwd, log_path=log)
        self.containers[name] = container
        return container

    def start_all(self, names: list[str]) -> dict[str, float]:
        """Start Services together (as one `kubectl apply` does); seconds until each turned Ready."""
        for name in names:
            self.start(name)
        return {name: self.wait_ready(name) for name in names}

    def stop(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            processes.stop_group(proc.pid, 15, what=name)
            proc.wait()

    def url(self, name: str) -> str | None:
        container = self.containers.get(name)
        return f"http://127.0.0.1:{container.port}" if container and name in self._procs else None

    def probe(self, name: str, probe: Probe) -> int | None:
        """The status a kubelet's httpGet probe gets (None: no answer)."""
        try:
            return processes.http_get(self.url(name) + probe.path, timeout=1.0)[0]
        except OSError:
            return None

    def wait_ready(self, name: str, within: float | None = None) -> float:
        """Seconds until the readiness probe passes (2xx/3xx), within the progress deadline."""
        container, started = self.containers[name], time.monotonic()
        limit = within or min(container.progress_deadline, LOCAL_READY_CAP)
        last: list[int | None] = [None]

        def ready() -> bool:
            last[0] = self.probe(name, container.readiness)
            return last[0] is not None and 200 <= last[0] < 400

        log = self.workdir / "logs" / f"{name}.log"
        try:
            processes.wait_until(ready, limit, proc=self._procs[name], what=name, log_path=log,
                                 interval=min(container.readiness.period, 1.0))
        except processes.NotReady as exc:
            raise NotReady(f"{name}: readiness probe GET {container.readiness.path} answered {last[0]} for "
                           f"{time.monotonic() - started:.0f}s: Knative never turns this revision Ready "
                           f"('Initial scale was never achieved'), and no event reaches it. {exc}") from None
        self.ready_seconds[name] = time.monotonic() - started
        return self.ready_seconds[name]

    def alive(self, name: str) -> bool:
        status = self.probe(name, self.containers[name].liveness)
        return status is not None and 200 <= status < 400

    # ------------------------------------------------------------ events
    def publish(self, event) -> None:
        """An event into the Broker, as the ingress KafkaSource (or a POST to the Broker) puts it there."""
        self.broker.take(event)

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        processes.wait_until(condition, timeout, what=what, interval=0.2)

    def received(self, event_type: str, source: str | None = None) -> list:
        return [e for e in list(self.broker.received) if e["type"] == event_type
                and (source is None or e["source"] == source)]

    def attempts(self, trigger: str) -> list[Attempt]:
        return [a for a in list(self.broker.attempts) if a.trigger == trigger]

