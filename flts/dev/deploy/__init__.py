"""Knative and OpenFaaS deployment files, generated from the routing table.

    flts deploy render --target knative|openfaas [--check]
    flts deploy shrinkwrap <function> <outdir>

One source of truth: `flts.routing` says which deployment takes which event type (and a
deployment's own env, e.g. MODEL_TYPE); `settings.FUNCTIONS` says how each function folder
runs. Every file is built from those two as plain dicts dumped with PyYAML, and a test
fails when a committed file differs from `render()`.

    settings.py   the function-settings table, ConfigMap values, secrets, images, ports
    knative.py    Services, ConfigMap, Secret template, Broker, Triggers, KafkaSinks/Sources, SinkBindings
    openfaas.py   stack.yml, the dispatcher (Deployment, Service, Dockerfile), shrinkwrap
    images.py     the functions' Dockerfiles and pinned requirements.txt
    validate.py   offline checks: CRD schemas, webhook rules, references, stack.yml schema
    generate.py   render / drift / write per target
    cli.py        `flts deploy ...`

The names below are the package's API (tests, flts/cli.py use them); the rest stays in its module.
"""
from flts.dev.deploy.cli import add_parser
from flts.dev.deploy.generate import TARGETS, drift, render, write
from flts.dev.deploy.images import REQUIREMENTS, dockerfile, requirements_txt
from flts.dev.deploy.knative import BROKER, CONFIGMAP, SECRET, knative_files
from flts.dev.deploy.openfaas import DISPATCHER_URL, WATCHDOG_ENV, dispatcher_objects, shrinkwrap, stack
from flts.dev.deploy.settings import (
    CONFIG,
    FUNCTIONS,
    KAFKA_BOOTSTRAP,
    MAX_INFLIGHT,
    PORT,
    REGISTRY,
    SECRETS,
    TEMPLATE,
    UPSTREAM,
    WATCHDOG_IMAGE,
    FunctionSettings,
    deployment_env,
    image,
    secret_file_name,
    settings_of,
)
from flts.dev.deploy.validate import (
    CORE_SCHEMAS,
    CRD_FILES,
    crd_schemas,
    knative_errors,
    load_yaml_objects,
    schema_errors,
    semantic_errors,
    stack_errors,
)

__all__ = [
    # the table and its constants
    "CONFIG", "FUNCTIONS", "KAFKA_BOOTSTRAP", "MAX_INFLIGHT", "PORT", "REGISTRY", "SECRETS", "TEMPLATE", "UPSTREAM",
    "WATCHDOG_IMAGE", "FunctionSettings", "deployment_env", "image", "secret_file_name", "settings_of",
    # builders
    "BROKER", "CONFIGMAP", "SECRET", "knative_files", "DISPATCHER_URL", "WATCHDOG_ENV", "dispatcher_objects", "stack",
    "REQUIREMENTS", "dockerfile", "requirements_txt", "shrinkwrap",
    # files and checks
    "TARGETS", "drift", "render", "write", "CORE_SCHEMAS", "CRD_FILES", "crd_schemas", "knative_errors",
    "load_yaml_objects", "schema_errors", "semantic_errors", "stack_errors",
    "add_parser",
]
