"""The dispatcher's pure parts: Kafka message ↔ CloudEvent, retry policy, reply parsing, routes.

No services needed; the behaviour against real Kafka and real function processes is in
test_dispatcher.py.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from flts import events, forecasters, routing
from flts.dispatcher.codec import BATCH_CONTENT_TYPE, event_from_kafka, event_to_kafka
from flts.dispatcher.delivery import reply_events, retry_after_seconds, retry_delay
from flts.dispatcher.ingress import events_from_request
from flts.dispatcher.routes import parse_targets, routes_from_table
from flts.dispatcher.settings import DispatchSettings
from flts.events import EventError
from flts.outcomes import retryable
from flts.settings import ConfigError


def _ready_event():
    data = events.DatasetReady(bucket="raw-data", object_key="PobleSec/PobleSec.csv", identifier="PobleSec")
    return events.make_event(events.DATASET_READY, "upload", data)


def test_binary_kafka_message_round_trip():
    event = _ready_event()
    message = event_to_kafka(event)
    assert message.key == "PobleSec"  # the subject keys the partition
    assert message.headers["ce_type"] == b"flts.dataset.ready"
    assert message.headers["content-type"] == b"application/json"
    assert orjson.loads(message.value)["object_key"] == "PobleSec/PobleSec.csv"
    back = event_from_kafka(list(message.headers.items()), message.value)
    assert back["id"] == event["id"] and back["type"] == event["type"] and back["subject"] == "PobleSec"
    assert back.data == event.data
    assert "partitionkey" not in back.get_attributes()  # the Kafka key is transport, not an attribute


def test_structured_kafka_message_is_accepted():
    event = _ready_event()
    headers, body = to_structured(event)
    back = event_from_kafka([("content-type", b"application/cloudevents+json")], body)
    assert back["id"] == event["id"] and back.data == event.data
    # without any header too (a dead letter's "event" replayed by hand)
    assert event_from_kafka([], body)["id"] == event["id"]


@pytest.mark.parametrize("headers, value, problem", [
    ([], b"hello", "not a CloudEvent"),
    ([], b'{"some": "json"}', "not a CloudEvent"),
    ([], b"[1, 2]", "not a CloudEvent"),
    ([("ce_specversion", b"1.0"), ("ce_type", b"x")], b"{}", "missing attribute"),
    ([("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"x")], b"{}", "specversion"),
    ([("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"x"),
      ("content-type", b"application/json")], b"{not json", "not a valid CloudEvent"),
    ([("ce_type", b"\xff\xfe")], b"{}", "UTF-8"),
    ([], b'{"specversion": "1.0", "type": "x", "source": "/s"}', "missing attribute"),
])
def test_malformed_kafka_messages_name_the_problem(headers, value, problem):
    with pytest.raises(EventError, match=problem):
        event_from_kafka(headers, value)


def test_retryable_statuses():
    assert all(retryable(s) for s in (500, 502, 503, 504, 408, 409, 429))
    assert not any(retryable(s) for s in (400, 401, 403, 404, 413, 422))


def test_retry_delay_is_exponential_capped_and_honours_retry_after():
    s = DispatchSettings("k:9092", backoff_base=0.5, backoff_max=4.0, retry_after_max=10.0)
    assert [retry_delay(a, None, s) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert retry_delay(1, 3.0, s) == 3.0  # the server asked for longer
    assert retry_delay(4, 1.0, s) == 4.0  # never shorter than the backoff
    assert retry_delay(1, 3600.0, s) == 10.0  # capped


def test_retry_after_header_forms():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 31


def test_max_poll_interval_covers_the_worst_record():
    s = DispatchSettings("k:9092", max_retries=2, timeout=100, connect_timeout=5, backoff_max=30, retry_after_max=60)
    assert s.max_poll_interval_ms() >= (3 * 105 + 2 * 60) * 1000


def _response(status, headers, body):
    return httpx.Response(status, headers=headers, content=body)


def test_reply_binary_batch_and_none():
    out = _ready_event()
    headers, body = to_binary(out)
    assert [e["id"] for e in reply_events(_response(200, headers, body))] == [out["id"]]
    batch = orjson.dumps([orjson.loads(to_structured(out)[1])] * 2)
    assert len(reply_events(_response(200, {"content-type": BATCH_CONTENT_TYPE}, batch))) == 2
    assert reply_events(_response(202, {}, b"")) == []
    assert reply_events(_response(200, {"content-type": "text/plain"}, b"OK")) == []
    with pytest.raises(EventError, match="batch"):
        reply_events(_response(200, {"content-type": BATCH_CONTENT_TYPE}, b'{"no": "list"}'))


def test_ingress_request_parsing():
    event = _ready_event()
    headers, body = to_binary(event)
    assert events_from_request(headers, body)[0]["id"] == event["id"]
    headers, body = to_structured(event)
    assert events_from_request(headers, body)[0]["id"] == event["id"]
    with pytest.raises(EventError, match="non-empty JSON list"):
        events_from_request({"Content-Type": BATCH_CONTENT_TYPE}, b"[]")
    with pytest.raises(EventError):
        events_from_request({"Content-Type": "application/json"}, b'{"no": "event"}')


def test_routes_follow_the_routing_table():
    targets = {d.name: f"http://127.0.0.1:{18100 + i}/" for i, d in enumerate(routing.DEPLOYMENTS)}
    routes = routes_from_table(targets)
    by_name = {s.deployment: s for s in routes.subscriptions}
    assert set(by_name) == {d.name for d in routing.DEPLOYMENTS}
    for model in forecasters.names():  # every trainer gets training-data in its own group
        assert by_name[f"train-{model.lower()}"].topics == ("training-data",)
    assert set(by_name["infer"].topics) == {"model-selected", "inference-data"}
    assert routes.topic_of(events.MODEL_TRAINING) == "model-training"
    with pytest.raises(EventError, match="no topic"):
        routes.topic_of("flts.unknown")
    only = routes_from_table({"preprocess": "http://127.0.0.1:1/"})
    assert [s.deployment for s in only.subscriptions] == ["preprocess"]


def test_targets_are_checked():
    assert parse_targets("preprocess=http://a:1/, eval=http://b:2/") == {"preprocess": "http://a:1/", "eval": "http://b:2/"}
    with pytest.raises(ConfigError, match="deployment=http"):
        parse_targets("preprocess")
    with pytest.raises(ConfigError, match="unknown deployments"):
        routes_from_table({"nope": "http://a:1/"})


def test_settings_from_env_errors_are_clear():
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        DispatchSettings.from_env({})
    with pytest.raises(ConfigError, match="DISPATCH_MAX_RETRIES"):
        DispatchSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DISPATCH_MAX_RETRIES": "many"})
    s = DispatchSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DISPATCH_MAX_RETRIES": "2",
                                   "DISPATCH_BACKOFF_BASE_SEC": "0.1"})
    assert (s.max_retries, s.backoff_base, s.offset_reset) == (2, 0.1, "earliest")


def test_event_with_bytes_data_round_trips():
    event = CloudEvent({"type": "x", "source": "/s", "datacontenttype": "application/octet-stream"}, b"\x00\x01")
    message = event_to_kafka(event)
    assert message.value == b"\x00\x01"
    assert event_from_kafka(list(message.headers.items()), message.value).data == b"\x00\x01"
