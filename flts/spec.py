"""What a function is, said once: the spec every function package exports as `SPEC`.

A spec names the function's CloudEvent handler, the event types it takes and emits, how
its process runs (server kind, entry point in functions/<name>/main.py, port, health
paths), its settings model and its scaling class. Everything else is derived from the
specs: the routing table (`flts.routing`), the embedded router, the local stack's plan,
the Knative/OpenFaaS files and the image's start command (template/flts-python/index.py).

Handlers and settings models are named as "module:attribute" strings and imported on
first use, so reading the specs (the CLI, the deploy generator) loads no heavy library.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

PORT = 8080  # where Knative and OpenFaaS's watchdog send a function's traffic, by convention

# A CloudEvent handler: `handle(event, env)` returns the events it emits (a list, or a
# generator when one should leave before the work ends). `env` is the deployment's settings.
Handler = Callable[[object, Mapping[str, str]], Iterable]


class Server(StrEnum):
    """The HTTP server a function's process runs."""

    FUNCTIONS_FRAMEWORK = "functions-framework"  # a Flask @functions_framework.http target
    UVICORN = "uvicorn"  # an ASGI app


class Scaling(StrEnum):
    """How a function is scaled: by events in flight, or by concurrent requests."""

    EVENT_WORKER = "event-worker"  # one event at a time per instance; scales with the backlog
    REQUEST_SERVER = "request-server"  # many requests per instance; scales to zero when idle


@dataclass(frozen=True)
class Variant:
    """One deployment of a function: a name and the env that sets it apart (a trainer's MODEL_TYPE)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class Capacity:
    """What one instance may take on a cluster: concurrency, replicas, time, CPU and memory."""

    concurrency: int  # requests one instance serves at once (Knative containerConcurrency)
    max_scale: int
    timeout_seconds: int  # one request; a trainer fits a whole training run in it (Knative max 600)
    requests: dict[str, str]
    limits: dict[str, str]
    # The share of `concurrency` the autoscaler keeps busy per instance, in percent: 100 for one
    # event at a time (below it, one event in flight would ask for two instances).
    target_utilization: int = 100
    min_scale: int = 0

    @property
    def effective_target(self) -> float:
        """Requests in flight per instance the autoscaler aims at."""
        return self.concurrency * self.target_utilization / 100


@dataclass(frozen=True)
class FunctionSpec:
    name: str  # the folder functions/<name>/ and the package flts.<name>
    handler: str  # "module:attribute" of `handle(event, env) -> Iterable[CloudEvent]`
    takes: tuple[str, ...]
    emits: tuple[str, ...]
    settings: str  # "module:Class" of its settings model (docs and the ConfigMap are derived from it)
    server: Server
    entry: str  # the functions-framework target, or the ASGI app's name, in functions/<name>/main.py
    scaling: Scaling
    capacity: Capacity
    variants: tuple[Variant, ...] = ()  # none: one deployment named like the function
    port: int = PORT
    liveness_path: str = "/healthz"  # GET routes: flts.function_http answers them for the event
    readiness_path: str = "/readyz"  # functions, infer's app for itself
    public: bool = False  # reachable from outside the cluster (infer's /predict)
    secrets: tuple[str, ...] = ("S3_ACCESS_KEY", "S3_SECRET_KEY")  # env names filled from a Secret
    env: dict[str, str] = field(default_factory=dict)  # fixed values, set in the manifests

    def deployments(self) -> tuple[Variant, ...]:
        return self.variants or (Variant(self.name),)

    def load_handler(self):
        return load(self.handler)

    def settings_model(self):
        return load(self.settings)

    def server_command(self, host: str, port: int, source_dir: str = ".") -> list[str]:
        """The command that serves functions/<name>/main.py (in `source_dir`) on host:port."""
        if self.server is Server.FUNCTIONS_FRAMEWORK:
            return functions_framework_command(f"{source_dir}/main.py", self.entry, host, port)
        return [sys.executable, "-m", "uvicorn", f"main:{self.entry}", "--app-dir", source_dir, "--host", host,
                "--port", str(port), "--no-access-log"]


def functions_framework_command(source: str, target: str, host: str, port: int) -> list[str]:
    """functions-framework serving the @functions_framework.http `target` of the file `source`."""
    return [sys.executable, "-m", "functions_framework", "--source", source, "--target", target, "--host", host,
            "--port", str(port)]


def load(path: str):
    """The attribute named by "module:attribute", imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def event_function(name: str, *, takes: tuple[str, ...], emits: tuple[str, ...], settings: str, entry: str,
                   capacity: Capacity, variants: tuple[Variant, ...] = ()) -> FunctionSpec:
    """An event worker on functions-framework, laid out by convention: its handler is
    `flts.<name>.handler:handle`, its settings model `flts.<name>.settings:<settings>`."""
    return FunctionSpec(name=name, handler=f"flts.{name}.handler:handle", takes=takes, emits=emits,
                        settings=f"flts.{name}.settings:{settings}", server=Server.FUNCTIONS_FRAMEWORK, entry=entry,
                        scaling=Scaling.EVENT_WORKER, capacity=capacity, variants=variants)
