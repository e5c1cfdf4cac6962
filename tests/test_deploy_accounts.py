"""Least-privilege storage on a cluster: every rendered function reads S3 credentials only from
its own secret (an account per function, as on the local stack), and each account's policy,
its documentation and the commands that create it are derived from flts.dev.infra.s3.GRANTS."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from test_deploy_crosscheck import template_index

from flts import routing
from flts.dev import deploy
from flts.dev.infra import InfraConfig, function_s3_credentials
from flts.dev.infra.s3 import GRANTS, READ, WRITE, bucket_policies

REPO = Path(__file__).resolve().parent.parent
S3_KEYS = set(deploy.S3_CREDENTIAL_KEYS)


def knative_services(objects) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}


def secret_refs(service: dict) -> dict[str, dict]:
    """Env name → its secretKeyRef."""
    env = service["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}


# --------------------------------------------------------------------------- Knative
@pytest.mark.parametrize("d", routing.DEPLOYMENTS, ids=lambda d: d.name)
def test_each_knative_service_reads_s3_credentials_only_from_its_own_secret(d, knative):
    refs = secret_refs(knative_services(knative)[d.name])
    assert {k: refs[k]["name"] for k in S3_KEYS} == dict.fromkeys(S3_KEYS, f"flts-s3-{d.function}")
    assert {ref["name"] for k, ref in refs.items() if k not in S3_KEYS} <= {deploy.SECRET}  # tokens: shared


def test_no_function_s_s3_secret_is_read_by_another_function(knative):
    readers: dict[str, set[str]] = {}
    for name, service in knative_services(knative).items():
        for ref in secret_refs(service).values():
            readers.setdefault(ref["name"], set()).add(routing.deployment(name).function)
    s3_secrets = {name: functions for name, functions in readers.items() if name != deploy.SECRET}
    assert s3_secrets == {f"flts-s3-{f}": {f} for f in deploy.account_functions()}
    assert set(deploy.account_functions()) == set(GRANTS)


def test_secret_templates_hold_each_key_once_and_no_value(knative):
    secrets = {o["metadata"]["name"]: o["stringData"] for o in knative if o["kind"] == "Secret"}
    assert set(secrets) == {deploy.SECRET, *(f"flts-s3-{f}" for f in deploy.account_functions())}
    assert not S3_KEYS & set(secrets[deploy.SECRET])  # the shared Secret holds no S3 account
    for function in deploy.account_functions():
        assert secrets[f"flts-s3-{function}"] == dict.fromkeys(sorted(S3_KEYS), "")


def _with_env(objects: list[dict], service: str, name: str, secret: str) -> list[dict]:
    objs = copy.deepcopy(objects)
    svc = knative_services(objs)[service]
    secret_refs(svc)[name]["name"] = secret
    return objs


def test_the_check_catches_a_shared_or_borrowed_s3_account(knative):
    assert deploy.credential_errors(knative) == []
    borrowed = deploy.credential_errors(_with_env(knative, "infer", "S3_ACCESS_KEY", "flts-s3-eval"))
    assert any("must come from one Secret" in e for e in borrowed), borrowed
    assert any("'flts-s3-eval', which functions ['eval', 'infer'] read" in e for e in borrowed), borrowed
    objs = _with_env(_with_env(knative, "infer", "S3_ACCESS_KEY", "flts-s3-gateway"),
                     "infer", "S3_SECRET_KEY", "flts-s3-gateway")
    assert any("Service 'gateway': its S3 credentials are in Secret 'flts-s3-gateway'" in e
               for e in deploy.semantic_errors(objs))


def test_the_check_catches_a_reference_to_a_missing_secret_or_key(knative):
    errors = deploy.credential_errors(_with_env(knative, "eval", "S3_ACCESS_KEY", "flts-credentials"))
    assert any("reads key 'S3_ACCESS_KEY' of Secret 'flts-credentials', which is not defined" in e for e in errors)


# --------------------------------------------------------------------------- OpenFaaS
@pytest.mark.parametrize("d", routing.DEPLOYMENTS, ids=lambda d: d.name)
def test_each_openfaas_function_mounts_only_its_own_s3_secrets(d, stack):
    secrets = stack["functions"][d.name]["secrets"]
    s3 = [s for s in secrets if s.startswith(("s3-access-key", "s3-secret-key"))]
    assert s3 == [f"s3-access-key-{d.function}", f"s3-secret-key-{d.function}"]
    assert stack["functions"][d.name]["build_args"]["FLTS_FUNCTION"] == d.function  # what index.py maps them by


def test_no_openfaas_s3_secret_is_mounted_by_two_functions(stack):
    mounted_by: dict[str, set[str]] = {}
    for name, fn in stack["functions"].items():
        for secret in fn["secrets"]:
            mounted_by.setdefault(secret, set()).add(routing.deployment(name).function)
    assert all(len(functions) == 1 for s, functions in mounted_by.items() if s.startswith("s3-")), mounted_by


def test_the_stack_check_catches_a_shared_s3_secret(stack):
    assert deploy.stack_credential_errors(stack) == []
    shared = copy.deepcopy(stack)
    shared["functions"]["infer"]["secrets"][:2] = ["s3-access-key", "s3-secret-key"]
    shared["functions"]["eval"]["secrets"][0] = "s3-access-key-gateway"
    errors = deploy.stack_credential_errors(shared)
    assert [e.split(":")[0] for e in errors] == ["stack.yml 'eval'", "stack.yml 'infer'"], errors


def test_index_reads_a_function_s_own_secrets_as_its_s3_credentials(tmp_path):
    index = template_index()
    (tmp_path / "s3-access-key-train").write_text("flts-train\n")
    (tmp_path / "s3-secret-key-train").write_text("train-secret")
    (tmp_path / "s3-secret-key").write_text("shared")  # a leftover shared secret: the own one wins
    (tmp_path / "event-token").write_text("token")
    env: dict[str, str] = {}
    assert index.secrets_to_env(tmp_path, env, "train") == ["S3_ACCESS_KEY", "S3_SECRET_KEY", "EVENT_TOKEN"]
    assert env == {"S3_ACCESS_KEY": "flts-train", "S3_SECRET_KEY": "train-secret", "EVENT_TOKEN": "token"}
    other: dict[str, str] = {}  # another function's secret is not this function's S3 account
    index.secrets_to_env(tmp_path, other, "infer")
    assert other["S3_SECRET_KEY"] == "shared" and "S3_ACCESS_KEY" not in other


# --------------------------------------------------------------------------- derived from GRANTS
def _allowed(policy: dict) -> set[tuple[str, str]]:
    """(bucket, action) pairs a policy allows."""
    return {(resource.removeprefix("arn:aws:s3:::").removesuffix("/*"), action)
            for statement in policy["Statement"] if statement["Effect"] == "Allow"
            for resource in statement["Resource"] for action in statement["Action"]}


@pytest.mark.parametrize("function", sorted(GRANTS))
def test_each_policy_allows_what_the_local_stack_s_bucket_policies_allow(function, tmp_path):
    cfg = InfraConfig(state_dir=tmp_path)
    account = function_s3_credentials(cfg, function).access_key
    local = {(resource.removeprefix("arn:aws:s3:::").removesuffix("/*"), action)
             for policy in bucket_policies(cfg).values() for statement in policy["Statement"]
             if statement["Principal"]["AWS"] == [account]
             for resource in statement["Resource"] for action in statement["Action"]}
    assert _allowed(deploy.policy(function)) == local
    assert account == deploy.access_key(function)  # the same account names as the local stack


@pytest.mark.parametrize("function", sorted(GRANTS))
def test_committed_policy_files_are_the_rendered_policies(function):
    committed = json.loads((REPO / deploy.policy_path(function)).read_text())
    assert committed == deploy.policy(function)
    writes = {bucket for bucket, action in _allowed(committed) if action == "s3:PutObject"}
    assert writes == {b for b, access in GRANTS[function].items() if access == WRITE}
    reads = {bucket for bucket, action in _allowed(committed) if action == "s3:GetObject"}
    assert reads == {b for b, access in GRANTS[function].items() if access in (READ, WRITE)}


def test_the_grants_table_of_the_docs_is_the_rendered_one():
    assert deploy.grants_table() in (REPO / "docs" / "deploy.md").read_text(), (
        "docs/deploy.md: paste `python -c 'from flts.dev import deploy; print(deploy.grants_table())'`")


def test_the_example_commands_of_the_docs_are_the_printed_ones():
    docs = (REPO / "docs" / "deploy.md").read_text()
    example = [line for line in docs.splitlines() if line.startswith(("mc admin", "kubectl -n flts create secret generic flts-s3-"))]
    assert len(example) == 4 and all(line in deploy.commands("knative").splitlines() for line in example), example


@pytest.mark.parametrize("target", deploy.TARGETS)
def test_the_commands_create_every_account_and_the_secrets_the_renders_read(target, knative, stack):
    script = deploy.commands(target)
    for function in deploy.account_functions():
        assert f"mc admin policy create \"$MC_ALIAS\" flts-{function} {deploy.policy_path(function)}" in script
    if target == "knative":
        created = set(re.findall(r"create secret generic (\S+) ", script))
        read = {ref["name"] for s in knative_services(knative).values()
                for k, ref in secret_refs(s).items() if k in S3_KEYS}
    else:
        created = set(re.findall(r"faas-cli secret create (\S+) ", script))
        read = {s for fn in stack["functions"].values() for s in fn["secrets"] if s.startswith("s3-")}
    assert created == read
    assert "--from-literal=\"$secret\"" in script or "S3_SECRET_KEY=\"$secret\"" in script


def test_s3_accounts_command_prints_the_script(capsys):
    from flts.cli import main

    assert main(["deploy", "s3-accounts", "--target", "openfaas"]) == 0
    assert capsys.readouterr().out == deploy.commands("openfaas")
