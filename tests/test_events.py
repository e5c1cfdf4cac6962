"""Event contracts: building, parsing and validating CloudEvents; JSON Schemas in docs/schemas."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from flts import events, routing
from flts.dev.schemas import rendered_schemas

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"
HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

SAMPLES: dict[str, dict] = {
    events.DATASET_READY: {"bucket": "raw-data", "object_key": "PobleSec/PobleSec.csv", "identifier": "PobleSec",
                           "test_object_key": "PobleSec/PobleSec_test.csv"},
    events.TRAINING_DATA: {"bucket": "processed-data", "object_key": f"PobleSec/{HASH}/train.parquet",
                           "config_hash": HASH, "identifier": "PobleSec", "v": 1,
                           "test_object_key": f"PobleSec/{HASH}/test.parquet", "rows": 15927, "test_rows": 3982,
                           "columns": ["time", "down"], "target": "down", "timestamp_column": "time"},
    events.INFERENCE_DATA: {"bucket": "processed-data", "object_key": f"PobleSec/{HASH}/train.parquet",
                            "config_hash": HASH, "identifier": "PobleSec", "v": 1},
    events.MODEL_TRAINING: {"status": "SUCCESS", "model_type": "GRU", "run_id": "abc123", "experiment": "flts",
                            "config_hash": HASH, "identifier": "PobleSec", "metrics": {"rmse": 0.5, "mae": 0.25}},
    events.MODEL_SELECTED: {"identifier": "PobleSec", "config_hash": HASH, "run_id": "abc123", "model_type": "GRU",
                            "experiment": "flts", "model_uri": "runs:/abc123/GRU", "rmse": 0.5, "mae": 0.25,
                            "mse": 0.25, "score": 0.375, "timestamp": "2024-01-01T00:00:00+00:00",
                            "weights": {"rmse": 0.5, "mae": 0.3, "mse": 0.2}, "artifact_bucket": "model-promotion",
                            "artifact_key": f"PobleSec/{HASH}/GRU.onnx", "artifact_format": "onnx"},
}


def required_fields(event_type: str) -> list[str]:
    return sorted(name for name, f in events.EVENT_MODELS[event_type].model_fields.items() if f.is_required())


def raw_event(event_type: str, data) -> CloudEvent:
    return CloudEvent({"type": event_type, "source": "/test", "datacontenttype": "application/json"}, data)


def test_every_type_has_a_sample_a_topic_and_a_schema():
    assert set(SAMPLES) == set(events.EVENT_MODELS)
    assert set(routing.TOPICS) == set(events.EVENT_MODELS)
    assert set(events.json_schemas()) == set(events.EVENT_MODELS)


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_make_event_sets_the_envelope(event_type):
    event = events.make_event(event_type, "preprocess", SAMPLES[event_type])
    assert event["type"] == event_type
    assert event["source"] == "/flts/preprocess"
    assert event["subject"] == "PobleSec"
    assert event["datacontenttype"] == "application/json"
    assert event["specversion"] == "1.0"
    assert event["id"] != events.make_event(event_type, "preprocess", SAMPLES[event_type])["id"]
    assert isinstance(event.data, dict)


@pytest.mark.parametrize("mode", [to_binary, to_structured])
@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_round_trip_over_http(event_type, mode):
    event = events.make_event(event_type, "test", SAMPLES[event_type])
    headers, body = mode(event)
    received = from_http(dict(headers), body)
    parsed = events.parse_data(received, (event_type,))
    assert isinstance(parsed, events.EVENT_MODELS[event_type])
    assert parsed.model_dump(mode="json", exclude_none=True) == SAMPLES[event_type]


def test_extra_fields_are_kept_for_forward_compatibility():
    data = SAMPLES[events.DATASET_READY] | {"uploaded_by": "someone"}
    parsed = events.parse_data(events.make_event(events.DATASET_READY, "test", data))
    assert parsed.model_dump()["uploaded_by"] == "someone"


def test_unknown_type_is_refused():
    with pytest.raises(events.EventError, match="unknown event type 'flts.bogus'"):
        events.make_event("flts.bogus", "test", {"identifier": "x"})
    with pytest.raises(events.EventError, match="unknown event type 'flts.bogus'"):
        events.parse_data(raw_event("flts.bogus", {"identifier": "x"}))


def test_type_not_expected_here_is_refused():
    event = events.make_event(events.MODEL_TRAINING, "train", SAMPLES[events.MODEL_TRAINING])
    with pytest.raises(events.EventError, match=r"'flts.model-training' is not handled here.*flts.dataset.ready"):
        events.parse_data(event, (events.DATASET_READY,))


@pytest.mark.parametrize("event_type, field", [(t, f) for t in sorted(SAMPLES) for f in required_fields(t)])
def test_missing_field_is_named(event_type, field):
    data = copy.deepcopy(SAMPLES[event_type])
    del data[field]
    with pytest.raises(events.EventError, match=rf"^{event_type}: missing field '{field}'$"):
        events.parse_data(raw_event(event_type, data))
    with pytest.raises(events.EventError, match=rf"missing field '{field}'"):
        events.make_event(event_type, "test", data)


@pytest.mark.parametrize("event_type, field, value", [
    (events.DATASET_READY, "bucket", 5),
    (events.DATASET_READY, "identifier", ""),
    (events.TRAINING_DATA, "rows", "many"),
    (events.TRAINING_DATA, "rows", -1),
    (events.TRAINING_DATA, "config_hash", "short"),
    (events.TRAINING_DATA, "columns", "time,down"),
    (events.MODEL_TRAINING, "status", "DONE"),
    (events.MODEL_TRAINING, "metrics", {"rmse": "bad"}),
    (events.MODEL_SELECTED, "rmse", "low"),
    (events.MODEL_SELECTED, "artifact_format", "pickle"),
    (events.MODEL_SELECTED, "weights", [0.5, 0.3, 0.2]),
])
def test_wrong_type_is_named(event_type, field, value):
    data = SAMPLES[event_type] | {field: value}
    with pytest.raises(events.EventError, match=rf"^{event_type}: field '{field}(\.\w+)?': "):
        events.parse_data(raw_event(event_type, data))


@pytest.mark.parametrize("data, kind", [(None, "NoneType"), ("text", "str"), (b"bytes", "bytes"), ([1, 2], "list")])
def test_data_must_be_an_object(data, kind):
    with pytest.raises(events.EventError, match=rf"data must be a JSON object, got {kind}"):
        events.parse_data(raw_event(events.DATASET_READY, data))


def test_make_event_validates_a_model_of_another_type():
    ready = events.DatasetReady(**SAMPLES[events.DATASET_READY])
    with pytest.raises(events.EventError, match="flts.model-selected: missing field 'config_hash'"):
        events.make_event(events.MODEL_SELECTED, "test", ready)
    claim = events.DataClaim(**SAMPLES[events.TRAINING_DATA])
    assert events.make_event(events.INFERENCE_DATA, "test", claim).data == claim.model_dump(mode="json", exclude_none=True)


def test_event_errors_are_value_errors():
    assert issubclass(events.EventError, ValueError)


# ---------------------------------------------------------------- JSON Schemas

def test_committed_schemas_match_the_code():
    """Fails when a model changed without `flts schemas` being run (docs/schemas drifted)."""
    expected = rendered_schemas()
    committed = {p.name: p.read_bytes() for p in SCHEMA_DIR.glob("*.json")}
    assert sorted(committed) == sorted(expected), "run `.venv/bin/flts schemas`"
    for name, content in expected.items():
        assert committed[name] == content, f"docs/schemas/{name} is stale: run `.venv/bin/flts schemas`"


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_schemas_accept_what_the_code_emits(event_type):
    schema = orjson.loads((SCHEMA_DIR / f"{event_type}.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    event = events.make_event(event_type, "test", SAMPLES[event_type])
    jsonschema.validate(event.data, schema, cls=jsonschema.Draft202012Validator)
    assert schema["title"] == event_type


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_schemas_refuse_what_the_code_refuses(event_type):
    schema = orjson.loads((SCHEMA_DIR / f"{event_type}.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    for field in required_fields(event_type):
        data = {k: v for k, v in SAMPLES[event_type].items() if k != field}
        assert not validator.is_valid(data), field
    assert not validator.is_valid(SAMPLES[event_type] | {"identifier": 42})


def test_contracts_doc_names_every_type_topic_and_field():
    """docs/contracts.md is written by hand: fail when a type, topic or data field is missing from it."""
    doc = (SCHEMA_DIR.parent / "contracts.md").read_text()
    for event_type, model in events.EVENT_MODELS.items():
        assert f"`{event_type}`" in doc, event_type
        assert f"`{routing.TOPICS[event_type]}`" in doc, routing.TOPICS[event_type]
        assert f"schemas/{event_type}.json" in doc, event_type
        for field in model.model_fields:
            assert f"`{field}`" in doc, f"{event_type}.{field}"
