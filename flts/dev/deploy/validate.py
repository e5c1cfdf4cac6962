"""Offline checks of the generated objects: nothing here needs a cluster.

Knative objects are validated against the upstream CRDs' schemas (deploy/schemas/knative/,
made strict: a misspelt field is an error, not silently pruned), then against what the
webhooks check and a schema cannot (autoscaling bounds, probe ports, references between
objects), then against what no webhook checks but a cluster would get wrong at run time
(instances per event, delivery timeouts shorter than a cold start plus the request), and
least privilege (each function reads its S3 credentials from a Secret no other function reads).
stack.yml is validated against the OpenFaaS stack schema, the rules of its edition, and the
same least privilege (each function mounts its own S3 secrets).

Knative's own webhook code and a real kube-apiserver check the same objects too
(flts/dev/deploy/upstream.py); these checks run without them and name the project's rules.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from flts import routing
from flts.dev import REPO
from flts.dev.deploy.cluster import PORT, S3_CREDENTIAL_KEYS, Edition, own_secret_file_name, secret_file_name
from flts.dev.deploy.openfaas import CE_MAX_REPLICAS, SCALE_MAX, SCALE_MIN, SCALE_ZERO

SCHEMA_DIR = REPO / "deploy" / "schemas"
KNATIVE_SCHEMA_DIR = SCHEMA_DIR / "knative"
CRD_FILES = ("serving-service.yaml", "eventing-broker.yaml", "eventing-trigger.yaml",
             "eventing-sinkbindings.yaml", "kafka-source.yaml", "kafka-sink.yaml", "eventing-eventpolicy.yaml")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ISO_DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}  # set by Knative itself
AUTOSCALING = "autoscaling.knative.dev/"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
# Knative's defaults when an annotation or field is absent (config-autoscaler, config-deployment,
# config-defaults of a fresh install).
DEFAULT_UTILIZATION = 70.0  # container-concurrency-target-percentage
DEFAULT_TARGET = 100.0  # container-concurrency-target-default, when containerConcurrency is 0
DEFAULT_PROGRESS_DEADLINE = 600  # seconds
DEFAULT_TIMEOUT = 300  # revision-timeout-seconds
GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

# Kubernetes label syntax: [prefix/]name, name and value up to 63 alphanumerics, - _ . inside.
LABEL_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL.pattern},
        "namespace": {"type": "string", "pattern": DNS_LABEL.pattern},
        "labels": {"type": "object", "propertyNames": {"pattern": LABEL_NAME},
                   "additionalProperties": {"type": "string", "pattern": LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
CORE_SCHEMAS = {  # the two core kinds we write, enough to catch wrong shapes and types
    ("v1", "ConfigMap"): {"type": "object", "additionalProperties": False, "required": ["data"], "properties": {
        "apiVersion": {}, "kind": {}, "metadata": OBJECT_META,
        "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
    ("v1", "Secret"): {"type": "object", "additionalProperties": False, "properties": {
        "apiVersion": {}, "kind": {}, "metadata": OBJECT_META, "type": {"type": "string"},
        "stringData": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 0}}}},
}


def load_yaml_objects(paths: Iterable[Path]) -> list[dict]:
    return [o for p in paths for o in yaml.safe_load_all(Path(p).read_text()) if o]


# --------------------------------------------------------------------------- schemas
def _strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it: unknown fields are not kept.

    Kubernetes prunes fields a structural schema does not declare (unless
    x-kubernetes-preserve-unknown-fields), silently; here they are errors, so a misspelt
    field fails the test instead of vanishing at apply time.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schemas(schema_dir: Path = KNATIVE_SCHEMA_DIR) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the strict openAPIV3Schema of every served version."""
    out = {}
    for name in CRD_FILES:
        for crd in yaml.safe_load_all((schema_dir / name).read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = dict(version["schema"]["openAPIV3Schema"])
                    # Some CRDs leave apiVersion/kind out of the schema: every object has them.
                    schema["properties"] = {**schema["properties"], "apiVersion": {"type": "string"},
                                            "kind": {"type": "string"}, "metadata": OBJECT_META}
                    out[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return out


def _jsonschema_errors(where: str, instance: Any, schema: dict) -> list[str]:
    """`<where>: <field path>: <message>` for each violation, in field-path order."""
    import jsonschema  # a dev dependency: only the checks need it

    errors = jsonschema.Draft7Validator(schema).iter_errors(instance)
    return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]


def schema_errors(obj: dict, schemas: dict[tuple[str, str], dict]) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = schemas.get(key) or CORE_SCHEMAS.get(key)
    where = f"{key[1]} {obj.get('metadata', {}).get('name')!r}"
    if schema is None:
        return [f"{where}: no schema for apiVersion {key[0]!r} kind {key[1]!r}"]
    return _jsonschema_errors(where, obj, schema)


def stack_schema(path: Path = SCHEMA_DIR / "openfaas" / "stack.schema.json") -> dict:
    return json.loads(path.read_text())


def stack_errors(spec: dict, schema: dict | None = None) -> list[str]:
    return _jsonschema_errors("stack.yml", spec, schema or stack_schema())


def stack_credential_errors(spec: dict) -> list[str]:
    """Each function mounts its own S3 account (s3-access-key-<folder>, ...), no shared or other one's."""
    errors = []
    prefixes = tuple(secret_file_name(k) for k in S3_CREDENTIAL_KEYS)
    for name, fn in spec.get("functions", {}).items():
        function = fn.get("build_args", {}).get("FLTS_FUNCTION", "")  # what index.py maps own secrets by
        mounted = sorted(s for s in fn.get("secrets", []) if s.startswith(prefixes))
        own = sorted(own_secret_file_name(k, function) for k in S3_CREDENTIAL_KEYS)
        if mounted and mounted != own:
            errors.append(f"stack.yml {name!r}: mounts the S3 secrets {mounted}: a function reads only its own "
                          f"account's, {own}")
    return errors


# --------------------------------------------------------------------------- OpenFaaS editions
PROBE_ANNOTATIONS = ("com.openfaas.health.http.", "com.openfaas.ready.http.")


def _count(labels: dict, name: str, default: int | None) -> int | None:
    """A replica-count label as a number (the stack schema reports one that is not)."""
    value = labels.get(name, "")
    return int(value) if str(value).isdigit() else default


def _ce_errors(where: str, labels: dict, annotations: dict) -> list[str]:
    """What OpenFaaS Community Edition refuses (openfaas/faas-netes, ValidateDeployRequest, CE
    build; the quoted message is its own) or silently ignores."""
    errors = []
    if SCALE_ZERO in labels:  # refused whatever its value
        errors.append(f"{where}: refused by CE: 'com.openfaas.scale.zero not available for Community Edition'")
    if _count(labels, SCALE_MAX, 0) > CE_MAX_REPLICAS:
        errors.append(f"{where}: refused by CE: {SCALE_MAX} {labels[SCALE_MAX]} is above its {CE_MAX_REPLICAS} replicas")
    ignored = sorted(a for a in annotations if a.startswith(PROBE_ANNOTATIONS))
    if ignored:
        errors.append(f"{where}: ignored by CE, whose probes are fixed at the watchdog's /_/health: {ignored}")
    return errors


def _pro_errors(where: str, name: str, annotations: dict) -> list[str]:
    """On Pro, com.openfaas.health.http.path sets the liveness probe: a failure restarts the pod."""
    liveness = annotations.get("com.openfaas.health.http.path")
    if liveness is None:
        return []
    try:
        spec = routing.deployment(name).spec
    except KeyError:
        return [f"{where}: not a deployment of the routing table"]
    if liveness != spec.liveness_path:
        return [f"{where}: com.openfaas.health.http.path {liveness} sets the liveness probe (a failure restarts the "
                f"pod): it must be the function's liveness route {spec.liveness_path}; readiness is "
                "com.openfaas.ready.http.path"]
    return []


def edition_errors(spec: dict, edition: Edition) -> list[str]:
    """The rules of the OpenFaaS edition stack.yml is deployed to, for every function."""
    errors = []
    for name, fn in spec.get("functions", {}).items():
        where = f"stack.yml {name!r}"
        labels, annotations = fn.get("labels", {}), fn.get("annotations", {})
        low, high = _count(labels, SCALE_MIN, 1), _count(labels, SCALE_MAX, None)
        if high is not None and low > high:
            errors.append(f"{where}: {SCALE_MIN} {low} is above {SCALE_MAX} {high}")
        if edition is Edition.CE:
            errors += _ce_errors(where, labels, annotations)
        else:
            errors += _pro_errors(where, name, annotations)
    return errors


# --------------------------------------------------------------------------- webhook rules
def _container_rules(where: str, container: dict) -> list[str]:
    errors = []
    ports = container.get("ports", [])
    if len(ports) > 1 or any(p.get("name", "http1") not in ("http1", "h2c") for p in ports):
        errors.append(f"{where}: at most one port, named http1 or h2c")
    port = ports[0]["containerPort"] if ports else PORT
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container.get(probe_name, {})
        for kind in ("httpGet", "tcpSocket"):
            if kind in probe and probe[kind].get("port", port) != port:
                errors.append(f"{where}: {probe_name} port must be the container port {port}")
    reserved = RESERVED_ENV & {e["name"] for e in container.get("env", [])}
    if reserved:
        errors.append(f"{where}: env {sorted(reserved)} is reserved by Knative")
    return errors


def _service_rules(svc: dict) -> list[str]:
    """What Knative Serving's webhook checks that a schema cannot."""
    where = f"Service {svc['metadata']['name']!r}"
    errors = [f"{where}: autoscaling annotation {k!r} must sit under spec.template.metadata"
              for k in svc["metadata"].get("annotations", {}) if k.startswith(AUTOSCALING)]
    template = svc["spec"]["template"]
    ann = template.get("metadata", {}).get("annotations", {})
    spec = template["spec"]
    cc = spec.get("containerConcurrency", 0)
    try:
        low, high = int(ann.get(AUTOSCALING + "min-scale", 0)), int(ann.get(AUTOSCALING + "max-scale", 0))
        target = float(ann.get(AUTOSCALING + "target", cc or DEFAULT_TARGET))
        utilization = float(ann.get(AUTOSCALING + "target-utilization-percentage", DEFAULT_UTILIZATION))
    except ValueError as exc:
        return errors + [f"{where}: autoscaling annotation is not a number: {exc}"]
    if low < 0 or high < 0 or (high and low > high):
        errors.append(f"{where}: min-scale {low} must be <= max-scale {high} (both >= 0)")
    if target <= 0 or not 1 <= utilization <= 100:
        errors.append(f"{where}: autoscaling target must be > 0 and its utilization in 1..100 %")
    else:
        errors += _instances_per_request(where, min(target, cc or target) * utilization / 100)
    if ann.get(AUTOSCALING + "metric", "concurrency") not in ("concurrency", "rps"):
        errors.append(f"{where}: the KPA scales on concurrency or rps only")
    timeout = spec.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if not 0 < timeout <= 600:
        errors.append(f"{where}: timeoutSeconds {timeout} must be in 1..600 (max-revision-timeout-seconds)")
    if not 0 <= cc <= 1000:
        errors.append(f"{where}: containerConcurrency {cc} must be in 0..1000")
    if cc and target > cc:
        errors.append(f"{where}: autoscaling target {target} exceeds containerConcurrency {cc}")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        errors.append(f"{where}: exactly one container expected, got {len(containers)}")
    return errors + [e for c in containers for e in _container_rules(where, c)]


def _instances_per_request(where: str, effective_target: float) -> list[str]:
    """The KPA wants ceil(in flight / effective target) instances: below 1, more than one per request."""
    if effective_target >= 1:
        return []
    return [f"{where}: effective autoscaling target {effective_target:g} (target × target-utilization-percentage) "
            f"is below 1: one request in flight asks for {math.ceil(1 / effective_target)} instances"]


def duration_seconds(text: str) -> float | None:
    """Seconds of an ISO-8601 duration (PT900S) or a Go duration (300s, 10m); None when neither."""
    iso = ISO_DURATION.match(text)
    if iso:
        days, _, hours, minutes, seconds, _ = iso.groups()
        parts = ((days, 86400), (hours, 3600), (minutes, 60), (seconds, 1))
        return sum(float(value[:-1]) * unit for value, unit in parts if value)
    go = GO_DURATION.match(text)
    if go and any(go.groups()):
        hours, minutes, seconds = (int(v or 0) for v in go.groups())
        return hours * 3600 + minutes * 60 + seconds
    return None


def _worst_case_seconds(svc: dict) -> float:
    """A cold start (the revision's progress deadline) plus the request (timeoutSeconds)."""
    template = svc["spec"]["template"]
    deadline = template.get("metadata", {}).get("annotations", {}).get(PROGRESS_DEADLINE)
    cold = duration_seconds(deadline) if deadline else DEFAULT_PROGRESS_DEADLINE
    return (cold or 0) + template["spec"].get("timeoutSeconds", DEFAULT_TIMEOUT)


def delivery_timeout_errors(objects: list[dict]) -> list[str]:
    """A Trigger's per-attempt timeout must outlast its subscriber's cold start plus its request:
    shorter, and the Broker retries while the first attempt still runs, onto a second instance."""
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    errors = []
    for trigger in (o for o in objects if o["kind"] == "Trigger"):
        ref = trigger["spec"].get("subscriber", {}).get("ref", {})
        timeout = trigger["spec"].get("delivery", {}).get("timeout")
        if ref.get("kind") != "Service" or ref.get("name") not in services or timeout is None:
            continue  # no timeout: the attempt waits as long as the subscriber takes
        need, got = _worst_case_seconds(services[ref["name"]]), duration_seconds(timeout) or 0
        if got < need:
            errors.append(f"Trigger {trigger['metadata']['name']!r}: delivery timeout {timeout} ({got:g} s) is shorter "
                          f"than Service {ref['name']!r}'s cold start plus timeoutSeconds ({need:g} s): the Broker "
                          "would retry while the first attempt still runs, and the retry lands on a second instance")
    return errors


def _delivery_rules(where: str, delivery: dict | None) -> list[str]:
    if not delivery:
        return [f"{where}: no delivery spec (retries and a dead-letter sink are required)"]
    errors = []
    if delivery.get("backoffPolicy") not in ("linear", "exponential"):
        errors.append(f"{where}: backoffPolicy must be linear or exponential")
    for key in ("backoffDelay", "timeout"):
        if key in delivery and not ISO_DURATION.match(delivery[key]):
            errors.append(f"{where}: delivery.{key} {delivery[key]!r} is not an ISO-8601 duration")
    if not isinstance(delivery.get("retry"), int) or delivery["retry"] < 0:
        errors.append(f"{where}: delivery.retry must be an integer >= 0")
    if "deadLetterSink" not in delivery:
        errors.append(f"{where}: no deadLetterSink")
    return errors


Names = set[tuple[str, str]]  # (kind, name) of every object in the set checked


def _ref_errors(where: str, dest: dict | None, names: Names) -> list[str]:
    """A destination (subscriber, sink, dead-letter sink) is a uri or a ref to a defined object."""
    if not dest or ("ref" not in dest and "uri" not in dest):
        return [f"{where}: needs a ref or uri"]
    if "ref" in dest and (dest["ref"]["kind"], dest["ref"]["name"]) not in names:
        return [f"{where}: refers to {dest['ref']['kind']} {dest['ref']['name']!r}, which is not defined"]
    return []


def _trigger_rules(where: str, spec: dict, names: Names) -> list[str]:
    errors = []
    if not spec.get("broker"):
        errors.append(f"{where}: no broker")
    elif ("Broker", spec["broker"]) not in names:
        errors.append(f"{where}: broker {spec['broker']!r} is not defined")
    errors += _ref_errors(f"{where} subscriber", spec.get("subscriber"), names)
    errors += _delivery_rules(where, spec.get("delivery"))
    if spec.get("delivery", {}).get("deadLetterSink"):
        errors += _ref_errors(f"{where} deadLetterSink", spec["delivery"]["deadLetterSink"], names)
    return errors


def _kafka_source_rules(where: str, spec: dict, names: Names) -> list[str]:
    errors = [f"{where}: {key} is required and must not be empty"
              for key in ("bootstrapServers", "topics") if not spec.get(key)]
    return errors + _ref_errors(f"{where} sink", spec.get("sink"), names) + _delivery_rules(where, spec.get("delivery"))


def _kafka_sink_rules(where: str, spec: dict, names: Names) -> list[str]:
    if not spec.get("topic") or not spec.get("bootstrapServers"):
        return [f"{where}: topic and bootstrapServers are required"]
    return []


def _sink_binding_rules(where: str, spec: dict, names: Names) -> list[str]:
    errors = _ref_errors(f"{where} sink", spec.get("sink"), names)
    subject = spec.get("subject", {})
    if (subject.get("kind"), subject.get("name")) not in names:
        errors.append(f"{where}: subject {subject.get('kind')} {subject.get('name')!r} is not defined")
    return errors


# kind → rules over (where, spec, names); Services have their own (they read more than the spec).
_SPEC_RULES: dict[str, Callable[[str, dict, Names], list[str]]] = {
    "Trigger": _trigger_rules,
    "KafkaSource": _kafka_source_rules,
    "KafkaSink": _kafka_sink_rules,
    "SinkBinding": _sink_binding_rules,
}


def _secret_key_refs(service: dict) -> dict[str, tuple[str, str]]:
    """Env name → (Secret, key) of a Service's secretKeyRef entries."""
    env = service["spec"]["template"]["spec"]["containers"][0].get("env", [])
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in env}
    return {name: (ref["name"], ref["key"]) for name, ref in refs.items() if ref}


def _function_of(service: dict) -> str:
    labels = service["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component", service["metadata"]["name"])


def credential_errors(objects: list[dict]) -> list[str]:
    """Every secretKeyRef names a key of a Secret (template) of this set, and each function reads
    its S3 credentials from one Secret of its own: no other function reads that Secret."""
    secrets = {o["metadata"]["name"]: set(o.get("stringData", {})) for o in objects if o["kind"] == "Secret"}
    services = [o for o in objects if o["kind"] == "Service"]
    readers: dict[str, set[str]] = {}  # Secret → the functions reading any key of it
    for service in services:
        for secret, _ in _secret_key_refs(service).values():
            readers.setdefault(secret, set()).add(_function_of(service))
    errors = []
    for service in services:
        where, refs = f"Service {service['metadata']['name']!r}", _secret_key_refs(service)
        errors += [f"{where}: env {name} reads key {key!r} of Secret {secret!r}, which is not defined"
                   for name, (secret, key) in refs.items() if key not in secrets.get(secret, ())]
        accounts = {refs[k][0] if k in refs else None for k in S3_CREDENTIAL_KEYS}
        if accounts == {None}:
            continue  # reads no S3 credentials
        if len(accounts) != 1 or None in accounts:
            errors.append(f"{where}: {' and '.join(S3_CREDENTIAL_KEYS)} must come from one Secret, not "
                          f"{sorted(map(str, accounts))}")
        for secret in accounts - {None}:
            if readers[secret] != {_function_of(service)}:
                errors.append(f"{where}: its S3 credentials are in Secret {secret!r}, which functions "
                              f"{sorted(readers[secret])} read: each function's S3 account needs a Secret of its own")
    return errors


def semantic_errors(objects: list[dict]) -> list[str]:
    """Webhook rules, references (every ref points at an object of this set), delivery timeouts and credentials."""
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    errors = []
    seen = set()
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        where = f"{kind} {name!r}"
        if (kind, name) in seen:
            errors.append(f"{where}: defined twice")
        seen.add((kind, name))
        if kind == "Service":
            errors += _service_rules(o)
        elif kind in _SPEC_RULES:
            errors += _SPEC_RULES[kind](where, o.get("spec", {}), names)
    return errors + delivery_timeout_errors(objects) + credential_errors(objects)


def knative_errors(objects: list[dict], schema_dir: Path = KNATIVE_SCHEMA_DIR) -> list[str]:
    schemas = crd_schemas(schema_dir)
    return [e for o in objects for e in schema_errors(o, schemas)] + semantic_errors(objects)
