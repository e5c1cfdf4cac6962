"""Shared fixtures.

`infra` starts the real services once per test session (Kafka, S3 server, PostgreSQL,
MLflow) on private ports and a temporary state dir, and stops them at the end.
"""
from __future__ import annotations

import os
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


@pytest.fixture
def file_store(tmp_path):
    from flts.storage import FileStore

    return FileStore(tmp_path / "objects")
