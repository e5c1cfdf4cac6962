"""Each function's own S3 account on a cluster, as the local stack has them: grants, policy, secrets.

What each function may do is `flts.dev.infra.s3.GRANTS`, the local stack's one source of truth
(read there, never copied here). From it:
  * `policy(function)`: an IAM identity policy allowing exactly that (the same actions as the
    local stack's bucket policies), written to deploy/s3/policies/<function>.json by
    `flts deploy render`; MinIO (`mc admin policy create`) and AWS IAM take it as it is;
  * `grants_table()`: the table of docs/deploy.md (a test checks they agree);
  * `commands(target)`: the shell commands creating each account and its secret
    (`flts deploy s3-accounts --target knative|openfaas`).
The account names are the local stack's (`flts-<function>`). The trainers are one function,
so they share one account.
"""
from __future__ import annotations

import json

from flts import routing
from flts.dev.deploy.cluster import own_secret_file_name, own_secret_keys
from flts.dev.deploy.knative import s3_secret_name
from flts.dev.infra.config import DEFAULT_BUCKETS
from flts.dev.infra.s3 import BUCKET_ACTIONS, GRANTS, OBJECT_ACTIONS, READ, WRITE

NAMESPACE = "flts"  # the Knative namespace of docs/deploy.md
POLICY_DIR = "deploy/s3/policies"
ACCESS_LABEL = {READ: "read", WRITE: "read, write"}  # write includes read (GRANTS)
SECRET_BYTES = 20  # each account's generated secret key: 40 hex characters


def account_functions() -> list[str]:
    """Function folders that read S3 credentials, in routing-table order: one account each."""
    return [spec.name for spec in routing.SPECS if own_secret_keys(spec)]


def access_key(function: str) -> str:
    return f"flts-{function}"


def granted_buckets() -> list[str]:
    """Buckets some function may use, in the local stack's order (mlflow: only the MLflow server's)."""
    granted = {bucket for buckets in GRANTS.values() for bucket in buckets}
    return [b for b in [*DEFAULT_BUCKETS, *sorted(granted - set(DEFAULT_BUCKETS))] if b in granted]


def grants(function: str) -> dict[str, str]:
    """Bucket → access of one function (GRANTS), buckets in the local stack's order."""
    if function not in GRANTS:  # a new function reads S3 credentials: say what its account may do
        raise ValueError(f"function {function!r} has no grants: add them to flts.dev.infra.s3.GRANTS")
    return {bucket: GRANTS[function][bucket] for bucket in granted_buckets() if bucket in GRANTS[function]}


def policy(function: str) -> dict:
    """IAM identity policy: list the granted buckets, read (or read and write) their objects."""
    access_of = grants(function)
    statements = [{"Effect": "Allow", "Action": BUCKET_ACTIONS,
                   "Resource": [f"arn:aws:s3:::{bucket}" for bucket in access_of]}]
    for access in (READ, WRITE):
        buckets = [bucket for bucket in access_of if access_of[bucket] == access]
        if buckets:
            statements.append({"Effect": "Allow", "Action": OBJECT_ACTIONS[access],
                               "Resource": [f"arn:aws:s3:::{bucket}/*" for bucket in buckets]})
    return {"Version": "2012-10-17", "Statement": statements}


def policy_path(function: str) -> str:
    return f"{POLICY_DIR}/{function}.json"


def policy_files() -> dict[str, str]:
    """Repository path → each account's policy (JSON)."""
    return {policy_path(f): json.dumps(policy(f), indent=2) + "\n" for f in account_functions()}


def _grants_text(function: str) -> str:
    return "; ".join(f"{bucket} {ACCESS_LABEL[access]}" for bucket, access in grants(function).items())


def _openfaas_secrets(function: str) -> list[str]:
    spec = routing.function_spec(function)
    return [own_secret_file_name(k, function) for k in own_secret_keys(spec)]


def grants_table() -> str:
    """Markdown: each account, what it may do per bucket, and where each platform reads its credentials."""
    buckets = granted_buckets()
    rows = [
        "| function (account) | " + " | ".join(f"`{b}`" for b in buckets) + " | Knative Secret | OpenFaaS secrets |",
        "|---" * (len(buckets) + 3) + "|",
    ]
    for function in account_functions():
        cells = [ACCESS_LABEL.get(grants(function).get(b, ""), "—") for b in buckets]
        secrets = ", ".join(f"`{s}`" for s in _openfaas_secrets(function))
        rows.append(f"| {function} (`{access_key(function)}`) | " + " | ".join(cells)
                    + f" | `{s3_secret_name(function)}` | {secrets} |")
    return "\n".join(rows) + "\n"


def _create_account(function: str) -> list[str]:
    """MinIO's client: the account, its policy, the policy attached to it."""
    name = access_key(function)
    return [
        f'mc admin user add "$MC_ALIAS" {name} "$secret"',
        f'mc admin policy create "$MC_ALIAS" {name} {policy_path(function)}',
        f'mc admin policy attach "$MC_ALIAS" {name} --user {name}',
    ]


def _create_secret(function: str, target: str) -> list[str]:
    name = access_key(function)
    if target == "knative":
        return [f"kubectl -n {NAMESPACE} create secret generic {s3_secret_name(function)} "
                f'--from-literal=S3_ACCESS_KEY={name} --from-literal=S3_SECRET_KEY="$secret"']
    access, secret = _openfaas_secrets(function)
    return [f"faas-cli secret create {access} --from-literal={name}",
            f'faas-cli secret create {secret} --from-literal="$secret"']


def commands(target: str) -> str:
    """A shell script creating every function's account and its secret on `target`."""
    if target not in ("knative", "openfaas"):
        raise ValueError(f"unknown target {target!r} (knative or openfaas)")
    lines = [
        "#!/bin/sh",
        f"# One S3 account per function (flts.dev.infra.s3.GRANTS), its secret for {target}.",
        "# Run from the repository root; MC_ALIAS names your S3 server (`mc alias set`).",
        "# Each secret is created before its account: an existing one stops the script (set -e)",
        "# before the account's key changes under it.",
        "set -eu",
        ': "${MC_ALIAS:?set MC_ALIAS to the mc alias of your S3 server}"',
    ]
    for function in account_functions():
        lines += ["", f"# {function}: {_grants_text(function)}",
                  f"secret=$(openssl rand -hex {SECRET_BYTES})",
                  *_create_secret(function, target), *_create_account(function)]
    return "\n".join(lines) + "\n"
