"""The config hash is the identity of a preprocessing output (docs/design.md principle 3).

It must be stable (same inputs → same hash, in any process, in any key order) and must
change with everything that changes the output: each knob, the data, EXTRA_HASH_SALT.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from flts.preprocess.handler import (
    PreprocessSettings,
    build_active_config,
    canonical_json,
    config_hash,
    source_identity,
)
from flts.preprocess.settings import SET_ONLY_KNOBS

RAW = b"time,down\n2020-01-01 00:00,1\n2020-01-01 00:02,2\n"


def digest(env: dict | None = None, raw: bytes = RAW, key: str = "site/site.csv", test: tuple | None = None) -> str:
    settings = PreprocessSettings.from_env(env or {})
    sources = {"train": source_identity("raw-data", key, raw)}
    if test:
        sources["test"] = source_identity("raw-data", *test)
    return config_hash(build_active_config(settings, sources))


def test_hash_is_sha256_of_sorted_compact_json():
    config = {"b": [1, 2], "a": {"y": "x", "c": None}}
    expected = hashlib.sha256(b'{"a":{"c":null,"y":"x"},"b":[1,2]}').hexdigest()
    assert canonical_json(config) == b'{"a":{"c":null,"y":"x"},"b":[1,2]}'
    assert config_hash(config) == expected


def test_hash_ignores_key_order():
    a = {"preprocess": {"target": "down", "timestamp_column": "time"}, "sources": {"train": {"k": 1}}, "s": ""}
    b = {"s": "", "sources": {"train": {"k": 1}}, "preprocess": {"timestamp_column": "time", "target": "down"}}
    assert list(a) != list(b)
    assert config_hash(a) == config_hash(b)


def test_hash_is_stable_across_processes():
    # A fresh interpreter (its own PYTHONHASHSEED) must compute the same digest.
    code = (
        "from flts.preprocess.handler import *\n"
        f"s = PreprocessSettings.from_env({{}})\n"
        f"print(config_hash(build_active_config(s, {{'train': source_identity('raw-data', 'site/site.csv', {RAW!r})}})))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other == digest()
    assert len(other) == 64 and int(other, 16) >= 0


def test_default_settings_from_env_equal_the_dataclass_defaults():
    assert PreprocessSettings.from_env({}) == PreprocessSettings()
    assert digest({}) == digest({"TEST_FRACTION": "0.20", "CLIP_OUTLIERS": "false", "DROP_COLUMNS": ""})


# One changed value per knob that reaches the output; keyed by the knobs() entry it moves.
KNOB_CHANGES = {
    "timestamp_column": {"TIMESTAMP_COLUMN": "ts"},
    "target": {"TARGET_COLUMN": "up"},
    "test_fraction": {"TEST_FRACTION": "0.25"},
    "clip_outliers": {"CLIP_OUTLIERS": "1"},
    "clip_quantiles": {"CLIP_OUTLIERS": "1", "CLIP_QUANTILES": "0.01,0.99"},
    "time_features": {"TIME_FEATURES": "0"},
    "drop_columns": {"DROP_COLUMNS": "rnti_count"},
    "timestamp_format": {"TIMESTAMP_FORMAT": "%Y-%m-%d %H:%M"},
    "timestamp_dayfirst": {"TIMESTAMP_DAYFIRST": "1"},
    "timezone": {"TIMEZONE": "Europe/Madrid"},
}


def test_every_knob_is_covered_by_this_test():
    # SET_ONLY_KNOBS are in knobs() only when set: see test_knobs_added_later_leave_old_hashes_alone
    assert set(KNOB_CHANGES) | {"version"} == set(PreprocessSettings().knobs()) | set(SET_ONLY_KNOBS)


@pytest.mark.parametrize("knob", sorted(KNOB_CHANGES))
def test_hash_changes_with_each_knob(knob):
    env = KNOB_CHANGES[knob]
    base = {"CLIP_OUTLIERS": "1"} if knob == "clip_quantiles" else {}
    assert PreprocessSettings.from_env(env).knobs()[knob] != PreprocessSettings.from_env(base).knobs().get(knob)
    assert digest(env) != digest(base)


def test_knobs_added_later_leave_old_hashes_alone():
    # The digest of RAW with every knob at its default, computed before TIMESTAMP_FORMAT,
    # TIMESTAMP_DAYFIRST and TIMEZONE existed: outputs made before keep their identity.
    before = "3b46e442b6d55623f22ffe33cb63802190c6a813b620392a92e61a1c6441fba1"
    assert digest() == before
    assert digest({"TIMESTAMP_FORMAT": "", "TIMESTAMP_DAYFIRST": "0", "TIMEZONE": ""}) == before
    assert not set(SET_ONLY_KNOBS) & set(PreprocessSettings().knobs())


def test_clip_quantiles_do_not_matter_while_clipping_is_off():
    assert digest({"CLIP_QUANTILES": "0.01,0.99"}) == digest({})


def test_drop_columns_order_does_not_matter():
    assert digest({"DROP_COLUMNS": "a,b"}) == digest({"DROP_COLUMNS": "b, a"})


def test_hash_changes_with_data_content_and_key():
    assert digest(raw=RAW + b"2020-01-01 00:04,3\n") != digest()
    assert digest(raw=RAW.replace(b",2\n", b",5\n")) != digest()  # same size, other content
    assert digest(key="site/other.csv") != digest()


def test_hash_changes_with_test_object():
    with_test = digest(test=("site/site_test.csv", RAW))
    assert with_test != digest()
    assert digest(test=("site/site_test.csv", RAW + b"x")) != with_test
    assert digest(test=("site/other_test.csv", RAW)) != with_test


def test_hash_changes_with_extra_hash_salt():
    assert digest({"EXTRA_HASH_SALT": "run-2"}) != digest()
    assert digest({"EXTRA_HASH_SALT": "run-2"}) != digest({"EXTRA_HASH_SALT": "run-3"})


@pytest.mark.parametrize("env", [
    {"MAX_UPLOAD_BYTES": "1000"},
    {"PROCESSED_BUCKET": "other-bucket"},
    {"FORCE_REPROCESS": "1"},
    {"EMIT_INFERENCE_DATA": "1"},
])
def test_hash_ignores_settings_that_do_not_change_the_output(env):
    assert digest(env) == digest()


def test_source_identity_is_the_content_checksum():
    identity = source_identity("raw-data", "a/b.csv", RAW)
    assert identity == {"bucket": "raw-data", "object_key": "a/b.csv",
                        "sha256": hashlib.sha256(RAW).hexdigest(), "bytes": len(RAW)}


def test_active_config_holds_knobs_sources_and_salt():
    settings = PreprocessSettings(extra_hash_salt="pepper")
    sources = {"train": source_identity("raw-data", "a.csv", RAW)}
    config = build_active_config(settings, sources)
    assert config == {"preprocess": settings.knobs(), "sources": sources, "extra_hash_salt": "pepper"}
