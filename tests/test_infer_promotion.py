"""Issue 12: what infer serves comes from the promotion bucket, never from an event.

H1: a forged flts.model-selected (another artifact, another bucket, a far-future timestamp)
neither swaps nor pins the served model. M2: the default is the champion in current.json.
M3: a named identifier loads its own champion on its first request; one without gets 404.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cloudevents.conversion import to_binary

from flts import events
from flts.dev import testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer.app import create_app
from flts.infer.handler import on_model_selected
from flts.infer.pointers import PointerRefused
from flts.infer.registry import ModelRegistry
from flts.infer.settings import ServingSettings
from flts.promotion import current_key
from flts.storage import put_json

L, M = 10, 3
DOWN = LTE_FEATURES.index("down")


def promote(store, factor: float = 2.0, **options):
    """A persistence model (forecast = factor × last down) promoted as eval does it."""
    onnx = persistence_onnx(L, len(LTE_FEATURES), M, DOWN, factor=factor)
    return testing.promote(store, onnx, **{"artifact_bucket": "model-promotion", **options})


def write_pointer(store, pointer, *keys: str) -> None:
    for key in keys or (current_key(pointer.identifier), current_key()):
        put_json(store, "model-promotion", key, pointer.model_dump(mode="json", exclude_none=True))


def post_event(url: str, pointer, headers: dict | None = None) -> httpx.Response:
    ce_headers, body = to_binary(events.make_event(events.MODEL_SELECTED, "test", pointer))
    return httpx.post(url + "/", content=body, headers={**ce_headers, **(headers or {})}, timeout=30)


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.fixture(scope="module")
def window(lte_dir):
    return request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")


def served(url: str, window, identifier: str | None = None) -> str:
    body = {**window, "identifier": identifier} if identifier else window
    answer = httpx.post(url + "/predict", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["run_id"]


def serve(store, **env):
    return running_server(create_app({"FLTS_OBJECT_DIR": str(store.root), **env}, store))


# ---------------------------------------------------------------- H1: forged events

def test_a_forged_event_naming_another_artifact_or_bucket_changes_nothing(file_store, window):
    promote(file_store, run_id="real")
    # The forger's model lies in storage (a bucket of its choosing), but no pointer names it.
    forged = promote(file_store, factor=99.0, run_id="forged", artifact_bucket="evil-bucket", write_pointer=False)
    with serve(file_store) as url:
        assert post_event(url, forged).status_code == 202  # a notice: the champion is served already
        assert served(url, window) == "real"
        assert served(url, window, "PobleSec") == "real"


def test_a_far_future_event_is_refused_and_cannot_pin_the_model(file_store, window):
    promote(file_store, run_id="real")
    with serve(file_store) as url:
        future = promote(file_store, run_id="future", timestamp=in_days(3650), write_pointer=False)
        refused = post_event(url, future)
        assert refused.status_code == 400  # the event is bad: dead-letter, no retry
        assert "in the future" in refused.json()["error"] and "MAX_CLOCK_SKEW_SECONDS" in refused.json()["error"]
        # The next real promotion is served: nothing was pinned by the future timestamp.
        newer = promote(file_store, factor=3.0, run_id="newer")
        assert post_event(url, newer).status_code == 202
        assert served(url, window) == "newer"


def test_a_future_dated_or_foreign_bucket_pointer_in_storage_is_refused(file_store, window):
    promote(file_store, run_id="real")
    with serve(file_store) as url:
        future = promote(file_store, run_id="future", timestamp=in_days(1), write_pointer=False)
        write_pointer(file_store, future)
        refused = post_event(url, future)
        assert refused.status_code == 400 and "in the future" in refused.json()["error"]
        outside = promote(file_store, run_id="outside", artifact_bucket="elsewhere", write_pointer=False)
        write_pointer(file_store, outside)
        refused = post_event(url, outside)
        assert refused.status_code == 400
        assert "artifact bucket 'elsewhere'" in refused.json()["error"] and "PROMOTION_BUCKET" in refused.json()["error"]
        assert served(url, window) == "real"
    # ARTIFACT_BUCKETS names the other buckets infer may load from.
    with serve(file_store, ARTIFACT_BUCKETS="elsewhere") as url:
        assert served(url, window) == "outside"


def test_a_future_dated_pointer_is_not_loaded_at_start(file_store, capsys):
    promote(file_store, run_id="future", timestamp=in_days(1))
    with serve(file_store) as url:
        ready = httpx.get(url + "/readyz").json()
        assert ready["model"] is None
    assert "promotion_refused" in capsys.readouterr().err


def test_the_clock_skew_allowance_accepts_a_pointer_a_little_ahead(file_store):
    pointer = promote(file_store, run_id="ahead", timestamp=in_days(10 / 86400))  # 10 s ahead
    registry = ModelRegistry()
    assert on_model_selected(file_store, pointer, ServingSettings(), registry)["status"] == "swapped"
    with pytest.raises(PointerRefused, match="in the future"):
        on_model_selected(file_store, pointer, ServingSettings(max_clock_skew_seconds=1), ModelRegistry())


# ---------------------------------------------------------------- M2: the default

def test_the_default_is_the_champion_in_current_json_not_the_last_event(file_store, window):
    promote(file_store, run_id="elborn-1", identifier="ElBorn")
    promote(file_store, run_id="poblesec-1")  # current.json: PobleSec's champion
    with serve(file_store) as url:
        assert served(url, window) == "poblesec-1"
        # ElBorn is promoted again, but current.json keeps PobleSec (eval's write_current kept it).
        elborn = promote(file_store, factor=3.0, run_id="elborn-2", identifier="ElBorn", write_pointer=False)
        write_pointer(file_store, elborn, current_key("ElBorn"))
        assert post_event(url, elborn).status_code == 202
        assert served(url, window) == "poblesec-1"
        assert served(url, window, "ElBorn") == "elborn-2"
        # Once current.json names ElBorn's champion, the next notice makes it the default.
        write_pointer(file_store, elborn, current_key())
        assert post_event(url, elborn).status_code == 202
        assert served(url, window) == "elborn-2"


# ---------------------------------------------------------------- M3: named identifiers

def test_a_named_identifier_loads_its_champion_on_its_first_request(file_store, window):
    promote(file_store, run_id="elborn-1", identifier="ElBorn")
    promote(file_store, run_id="poblesec-1")
    with serve(file_store, MAX_MODELS="1") as url:
        assert httpx.get(url + "/readyz").json()["served"] == []  # a cold start loads the default only
        assert served(url, window, "ElBorn") == "elborn-1"
        assert served(url, window, "PobleSec") == "poblesec-1"  # MAX_MODELS=1: ElBorn is dropped ...
        assert httpx.get(url + "/readyz").json()["served"] == ["PobleSec"]
        assert served(url, window, "ElBorn") == "elborn-1"  # ... and loaded again when named
        for identifier in ("Nowhere", "global", "../x"):
            missing = httpx.post(url + "/predict", json={**window, "identifier": identifier})
            assert missing.status_code == 404, missing.text
            assert f"no champion is promoted for identifier {identifier!r}" in missing.json()["error"]
        v2 = httpx.get(url + "/v2/models/ElBorn")
        assert v2.status_code == 200 and v2.json()["name"] == "ElBorn"
        assert httpx.get(url + "/v2/models/Nowhere").status_code == 404
