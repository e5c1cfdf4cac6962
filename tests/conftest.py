"""Shared fixtures.

`infra` starts the real services once per test session (Kafka, S3 server, PostgreSQL,
MLflow) on private ports and a temporary state dir, and stops them at the end.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "lte"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def lte_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def knative() -> list[dict]:
    """The committed Knative objects (deploy/knative/*.yaml)."""
    from flts.dev import deploy

    return deploy.load_yaml_objects(REPO / p for p in deploy.knative_files())


@pytest.fixture(scope="session")
def stack() -> dict:
    """The committed OpenFaaS stack.yml."""
    import yaml

    return yaml.safe_load((REPO / "stack.yml").read_text())


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """A real kube-apiserver (+ etcd) with namespaces `flts` and `elsewhere`: it signs service-account
    tokens (TokenRequest) and serves its OIDC discovery document and keys, as a cluster does."""
    from flts.dev.deploy.upstream import KubeAPIServer

    with KubeAPIServer([], workdir=tmp_path_factory.mktemp("cluster")).running() as api:
        api.namespace("flts")
        api.namespace("elsewhere")
        yield api


@pytest.fixture
def oidc_env(kube, tmp_path):
    """The settings of a receiver in namespace `flts` checking OIDC tokens (flts.auth): its pod's own
    service account (token, ca.crt, namespace, as mounted in a pod) fetches the cluster's keys."""
    account = kube.service_account_dir(tmp_path / "serviceaccount", "flts")

    def env(audience: str, senders: str) -> dict[str, str]:
        return {"EVENT_OIDC_AUDIENCE": audience, "EVENT_OIDC_SENDERS": senders,
                "EVENT_OIDC_ISSUER_URL": kube.url, "EVENT_OIDC_ACCOUNT_DIR": str(account)}
    return env


@pytest.fixture
def file_store(tmp_path):
    from flts.storage import FileStore

    return FileStore(tmp_path / "objects")


@pytest.fixture(scope="session")
def infra():
    """The real services (Kafka, S3 server, PostgreSQL, MLflow) for the session; yields the InfraConfig.

    A private state dir and free ports, so a developer's own `flts up` is never touched.
    Stopped (no process left) at the end.
    """
    import shutil

    from flts.dev import infra as fi

    cfg = fi.ephemeral_config()
    try:
        fi.start_all(cfg)
        yield cfg
    finally:
        fi.stop_all(cfg)
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
