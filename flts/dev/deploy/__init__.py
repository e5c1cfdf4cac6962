"""Knative and OpenFaaS deployment files, generated from the routing table.

    flts deploy render [--target knative|openfaas] [--openfaas-edition ce|pro] [--kafka-replication N] [--check]
    flts deploy shrinkwrap <function> <outdir>
    flts deploy s3-accounts [--target knative|openfaas]

One source of truth: each function's spec (flts.<function>.SPEC) says how it runs, and
`flts.routing`, derived from the specs, says which deployment takes which event type (and a
deployment's own env, e.g. MODEL_TYPE). Every file is built from those two as plain dicts dumped with PyYAML, and a test
fails when a committed file differs from `render()`.

    cluster.py    render options, ConfigMap values and keys per function, registry, images, cold starts
    knative.py    Services, ConfigMap, Secret templates, Broker, Triggers, KafkaSinks/Sources, SinkBindings
    accounts.py   each function's own S3 account: its policy from flts.dev.infra.s3.GRANTS, the commands
    openfaas.py   stack.yml (per edition), the dispatcher (Deployment, Service, Dockerfile), shrinkwrap
    images.py     the functions' Dockerfiles and their pinned requirements (the lock's closure)
    validate.py   offline checks: CRD schemas, webhook rules, references, delivery timeouts,
                  stack.yml schema, the OpenFaaS edition's rules
    upstream.py   checks by upstream code: Knative's webhooks (Go), a real kube-apiserver + etcd
    localrun.py   the Services run as their manifests say, events delivered as the Triggers say
    generate.py   render / drift / write per target
    cli.py        `flts deploy ...`

The names below are the package's API (tests, flts/cli.py use them); the rest stays in its module.
"""
from flts.dev.deploy.accounts import access_key, account_functions, commands, grants_table, policy, policy_path
from flts.dev.deploy.cli import add_parser
from flts.dev.deploy.cluster import (
    CONFIG,
    DEFAULTS,
    KAFKA_BOOTSTRAP,
    PORT,
    REGISTRY,
    S3_CREDENTIAL_KEYS,
    TEMPLATE,
    UPSTREAM,
    WATCHDOG_IMAGE,
    Edition,
    RenderOptions,
    config_keys,
    deployment_env,
    image,
    own_secret_file_name,
    own_secret_keys,
    secret_file_name,
    shared_secret_keys,
)
from flts.dev.deploy.generate import TARGETS, drift, render, write
from flts.dev.deploy.images import REQUIREMENTS, dockerfile, requirements_txt
from flts.dev.deploy.knative import BROKER, CONFIGMAP, SECRET, knative_files, s3_secret_name
from flts.dev.deploy.openfaas import DISPATCHER_URL, WATCHDOG_ENV, dispatcher_objects, shrinkwrap, stack
from flts.dev.deploy.validate import (
    CORE_SCHEMAS,
    CRD_FILES,
    crd_schemas,
    credential_errors,
    delivery_timeout_errors,
    edition_errors,
    knative_errors,
    load_yaml_objects,
    schema_errors,
    semantic_errors,
    stack_credential_errors,
    stack_errors,
)

__all__ = [
    # the table and its constants
    "CONFIG", "DEFAULTS", "KAFKA_BOOTSTRAP", "PORT", "REGISTRY", "TEMPLATE", "UPSTREAM",
    "WATCHDOG_IMAGE", "Edition", "RenderOptions", "config_keys", "deployment_env", "image", "secret_file_name",
    "S3_CREDENTIAL_KEYS", "own_secret_file_name", "own_secret_keys", "shared_secret_keys",
    # each function's own S3 account
    "access_key", "account_functions", "commands", "grants_table", "policy", "policy_path", "s3_secret_name",
    # builders
    "BROKER", "CONFIGMAP", "SECRET", "knative_files", "DISPATCHER_URL", "WATCHDOG_ENV", "dispatcher_objects", "stack",
    "REQUIREMENTS", "dockerfile", "requirements_txt", "shrinkwrap",
    # files and checks
    "TARGETS", "drift", "render", "write", "CORE_SCHEMAS", "CRD_FILES", "credential_errors", "crd_schemas", "delivery_timeout_errors",
    "edition_errors", "knative_errors", "load_yaml_objects", "schema_errors", "semantic_errors", "stack_credential_errors", "stack_errors",
    "add_parser",
]
