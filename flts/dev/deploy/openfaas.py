"""OpenFaaS: stack.yml, the dispatcher that triggers the functions, and shrinkwrapped build contexts.

Each function's image runs of-watchdog by default: `:8080` → the function's server on
127.0.0.1:5000, `max_inflight` answering 429 (template/flts-python/index.py starts the server).

stack.yml is written for one edition (`flts deploy render --openfaas-edition ce|pro`):
Community Edition refuses a function that asks for a Pro feature, so CE gets none. Pro gets
scale to zero and the probe annotations (readiness `com.openfaas.ready.http.*`, liveness
`com.openfaas.health.http.*`); CE's probes are fixed at the watchdog's `/_/health`.

OpenFaaS CE has no Kafka connector: the project's dispatcher (flts/dispatcher/) is the
trigger. It consumes each deployment's topics and POSTs the events to the gateway, and its
HTTP ingress is every function's K_SINK (outputs go to the topic of their type).

Event authentication (EVENT_TOKEN, flts.auth): on CE every function mounts the secret
`event-token` (index.py turns it into EVENT_TOKEN), so its `POST /` requires the token and its
outputs to K_SINK carry it; the dispatcher reads the same value from the Kubernetes Secret
`flts-event-token` (optional: without it the dispatcher neither sends nor requires a token).
Pro's Kafka connector cannot send a bearer token, so Pro's functions get no event-token.

S3 credentials are each function's own (an account per function, flts/dev/deploy/accounts.py):
`s3-access-key-<function>` and `s3-secret-key-<function>`, which index.py reads back as
S3_ACCESS_KEY and S3_SECRET_KEY in that function only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from flts import __version__, routing
from flts.auth import EVENT_TOKEN_VAR
from flts.dev import REPO
from flts.dev.deploy.cluster import (
    APP_UID,
    CONFIG,
    DEFAULTS,
    GENERATED,
    KAFKA_BOOTSTRAP,
    PYTHON_IMAGE,
    REGISTRY,
    RETRIES,
    TEMPLATE,
    Edition,
    RenderOptions,
    config_keys,
    delivery_seconds,
    deployment_env,
    image,
    own_secret_file_name,
    own_secret_keys,
    secret_file_name,
    shared_secret_keys,
)
from flts.dev.deploy.images import PYTHON_ENV, SHARED_PACKAGE
from flts.routing import Deployment
from flts.spec import Capacity, FunctionSpec

GATEWAY = "http://127.0.0.1:8080"
STACK_COPY = ("./flts", "./pyproject.toml", "./README.md")  # into each build context's function/
# of-watchdog's own settings (lower case; read by the watchdog, not by our code).
WATCHDOG_ENV = ("max_inflight", "read_timeout", "write_timeout", "exec_timeout", "healthcheck_interval")
WATCHDOG_GRACE = 5  # seconds the watchdog waits beyond the function's own timeout
# Community Edition's limits, as faas-netes' ValidateDeployRequest enforces them (a function
# beyond them is refused at deploy): no com.openfaas.scale.zero label (any value:
# "com.openfaas.scale.zero not available for Community Edition"), com.openfaas.scale.max <= 5.
CE_MAX_REPLICAS = 5
SCALE_MIN, SCALE_MAX, SCALE_ZERO = "com.openfaas.scale.min", "com.openfaas.scale.max", "com.openfaas.scale.zero"

DISPATCHER = "flts-dispatcher"
DISPATCHER_NAMESPACE = "openfaas"
DISPATCHER_PORT = 18090
GATEWAY_IN_CLUSTER = "http://gateway.openfaas.svc.cluster.local:8080"
DISPATCHER_URL = f"http://{DISPATCHER}.{DISPATCHER_NAMESPACE}.svc.cluster.local:{DISPATCHER_PORT}/"
EVENT_TOKEN_SECRET = "flts-event-token"  # the dispatcher's copy (namespace openfaas), key EVENT_TOKEN


# --------------------------------------------------------------------------- stack.yml
def _labels(capacity: Capacity, edition: Edition) -> dict[str, str]:
    # Replicas while awake: at least 1 on both editions; going to zero is scale.zero's (Pro).
    low = max(capacity.min_scale, 1)
    if edition is Edition.CE:
        return {SCALE_MIN: str(low), SCALE_MAX: str(min(capacity.max_scale, CE_MAX_REPLICAS))}
    labels = {SCALE_MIN: str(low), SCALE_MAX: str(capacity.max_scale)}
    if capacity.min_scale == 0:
        labels[SCALE_ZERO] = "true"
    return labels


def _pro_annotations(d: Deployment) -> dict[str, str]:
    """The Kafka connector's subscription and the probes, routed through the watchdog to the function."""
    spec: FunctionSpec = d.spec
    topics = {"topic": ",".join(routing.topic_of(t) for t in d.subscribes)} if d.subscribes else {}  # gateway: none
    return {
        **topics,
        # Readiness: can take events (infer is ready without a model).
        "com.openfaas.ready.http.path": spec.readiness_path,
        "com.openfaas.ready.http.periodSeconds": "2",
        # Liveness: a failure restarts the pod, so never a path that waits for anything.
        "com.openfaas.health.http.path": spec.liveness_path,
        "com.openfaas.health.http.initialDelay": "10s",
    }


def _secrets(spec: FunctionSpec, edition: Edition) -> list[str]:
    """OpenFaaS secret names: the function's own S3 account (s3-access-key-<function>), then the shared ones."""
    # CE: the dispatcher delivers with EVENT_TOKEN, so every function can require it. Pro's Kafka
    # connector sends no Authorization header: a function requiring the token would refuse it all.
    shared = [*shared_secret_keys(spec), EVENT_TOKEN_VAR] if edition is Edition.CE else shared_secret_keys(spec)
    return [own_secret_file_name(k, spec.name) for k in own_secret_keys(spec)] + [secret_file_name(k) for k in shared]


def openfaas_function(d: Deployment, options: RenderOptions = DEFAULTS) -> dict:
    spec, capacity = d.spec, d.spec.capacity
    timeout = f"{capacity.timeout_seconds + WATCHDOG_GRACE}s"
    environment = {**{k: CONFIG[k] for k in sorted(config_keys(spec))}, **deployment_env(d)}
    if spec.emits:
        environment["K_SINK"] = DISPATCHER_URL
    environment.update(read_timeout=timeout, write_timeout=timeout, exec_timeout=timeout)
    if "MAX_INFLIGHT" in spec.env:  # the watchdog turns the app's own limit away at once (429)
        environment["max_inflight"] = spec.env["MAX_INFLIGHT"]
    function = {
        "lang": TEMPLATE,
        "handler": f"./functions/{d.function}",
        "image": image(d.function, options.registry),
        "build_args": {"FLTS_FUNCTION": spec.name},  # index.py starts the server its spec names
        "environment": environment,
        "secrets": _secrets(spec, options.openfaas_edition),
        "labels": _labels(capacity, options.openfaas_edition),
        "requests": {"cpu": capacity.requests["cpu"], "memory": capacity.requests["memory"]},
        "limits": {"cpu": capacity.limits["cpu"], "memory": capacity.limits["memory"]},
    }
    if options.openfaas_edition is Edition.PRO:  # CE's trigger is the dispatcher, its probes fixed
        function["annotations"] = _pro_annotations(d)
    return function


def stack(options: RenderOptions = DEFAULTS) -> dict:
    return {
        "version": "1.0",
        "provider": {"name": "openfaas", "gateway": GATEWAY},
        "configuration": {"templates": [{"name": TEMPLATE}], "copy": list(STACK_COPY)},
        "functions": {d.name: openfaas_function(d, options) for d in routing.DEPLOYMENTS},
    }


# --------------------------------------------------------------------------- dispatcher
def dispatcher_image(registry: str = REGISTRY) -> str:
    return f"{registry}/{DISPATCHER}:{__version__}"


def _dispatcher_env() -> dict[str, str]:
    slowest = max(delivery_seconds(d) for d in routing.DEPLOYMENTS)  # Pro: a cold start from zero first
    return {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
        # the deployments that take events (not the gateway function, which only emits)
        "DISPATCH_TARGETS": ",".join(f"{d.name}={GATEWAY_IN_CLUSTER}/function/{d.name}" for d in routing.DEPLOYMENTS
                                     if d.subscribes),
        # what a function's replicas take at once: its instances' capacity times the most of them
        "DISPATCH_LIMITS": ",".join(f"{d.name}={d.spec.capacity.concurrency * d.spec.capacity.max_scale}"
                                    for d in routing.DEPLOYMENTS if d.subscribes),
        "DISPATCH_MAX_RETRIES": str(RETRIES),
        "DISPATCH_TIMEOUT_SEC": str(slowest + 2 * WATCHDOG_GRACE),  # longer than any function may take
        "DISPATCH_INGRESS_HOST": "0.0.0.0",
        "DISPATCH_INGRESS_PORT": str(DISPATCHER_PORT),
    }


def dispatcher_objects(registry: str = REGISTRY) -> list[dict]:
    """Deployment + Service of the dispatcher, targets from the routing table."""
    labels = {"app.kubernetes.io/name": DISPATCHER, "app.kubernetes.io/part-of": "flts"}
    container = {
        "name": "dispatcher",
        "image": dispatcher_image(registry),
        "ports": [{"name": "http", "containerPort": DISPATCHER_PORT}],
        "env": [{"name": k, "value": v} for k, v in _dispatcher_env().items()] + [
            # optional: a Pro install (whose functions cannot require the token) leaves the Secret out
            {"name": EVENT_TOKEN_VAR, "valueFrom": {"secretKeyRef": {"name": EVENT_TOKEN_SECRET, "key": EVENT_TOKEN_VAR,
                                                                      "optional": True}}},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": DISPATCHER_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": DISPATCHER_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": APP_UID, "allowPrivilegeEscalation": False},
    }
    meta = {"name": DISPATCHER, "namespace": DISPATCHER_NAMESPACE, "labels": labels}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1,  # one consumer per group is enough; more replicas share the partitions
            "selector": {"matchLabels": {"app.kubernetes.io/name": DISPATCHER}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        }},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "selector": {"app.kubernetes.io/name": DISPATCHER},
            "ports": [{"name": "http", "port": DISPATCHER_PORT, "targetPort": DISPATCHER_PORT}],
        }},
    ]


DISPATCHER_DOCKERFILE = """\
# {generated}
# Image of the event dispatcher (Kafka → OpenFaaS functions, and their K_SINK). Build from
# the repository root:  docker build -f deploy/openfaas/dispatcher.Dockerfile -t {image} .
FROM {python}
{python_env}
RUN useradd --uid {uid} --create-home --shell /usr/sbin/nologin app
# Dependencies first (every package pinned), in a layer a code change does not touch.
WORKDIR /app/eventing/dispatcher
COPY eventing/dispatcher/requirements.txt ./
RUN pip install -r requirements.txt
{shared_package}
COPY eventing/dispatcher/ eventing/dispatcher/
WORKDIR /app/eventing/dispatcher
USER {uid}
ENV HOME=/home/app
EXPOSE {port}
CMD ["python", "main.py"]
"""


def dispatcher_dockerfile(registry: str = REGISTRY) -> str:
    return DISPATCHER_DOCKERFILE.format(generated=GENERATED.format(target="openfaas"), image=dispatcher_image(registry),
                                        python=PYTHON_IMAGE, uid=APP_UID, port=DISPATCHER_PORT,
                                        python_env=PYTHON_ENV, shared_package=SHARED_PACKAGE)


# --------------------------------------------------------------------------- shrinkwrap
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=_SKIP, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def shrinkwrap(name: str, outdir: Path, repo: Path = REPO, stack_file: dict | None = None) -> Path:
    """The build context `faas-cli build --shrinkwrap` makes for one function of stack.yml.

    Layout (faas-cli / go-sdk builder.CreateBuildContext): the template's files at the
    root, the handler folder's files under function/ (minus `build` and `template`), and
    every `configuration.copy` path under function/<path>. Returns <outdir>/<name>.
    """
    spec = stack_file or stack()
    try:
        fn = spec["functions"][name]
    except KeyError:
        raise KeyError(f"no function {name!r} in stack.yml (known: {sorted(spec['functions'])})") from None
    template_dir = repo / "template" / fn["lang"]
    handler = (repo / fn["handler"]).resolve()
    if not (template_dir / "template.yml").is_file():
        raise FileNotFoundError(f"template {fn['lang']!r} not found: {template_dir}/template.yml is missing")
    if not handler.is_dir():
        raise FileNotFoundError(f"handler folder of {name!r} not found: {handler}")
    context = Path(outdir) / name
    if context.exists():
        shutil.rmtree(context)
    _copy(template_dir, context)
    for item in sorted(handler.iterdir()):
        if item.name not in ("build", "template") and not _SKIP(str(handler), [item.name]):
            _copy(item, context / "function" / item.name)
    for extra in spec.get("configuration", {}).get("copy", []):
        src = (repo / extra).resolve()
        if repo.resolve() not in src.parents:  # faas-cli refuses paths outside the project
            raise ValueError(f"configuration.copy path {extra!r} is outside the project {repo}")
        _copy(src, context / "function" / src.relative_to(repo.resolve()))
    return context
