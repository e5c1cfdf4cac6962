"""CloudEvents on Kafka: one message ⇄ one event.

We write the Kafka protocol binding's *binary content mode* (what Knative's KafkaSink
writes): `ce_<attribute>` headers, `content-type: application/json`, the value is the event
data as JSON, the key is the event's subject (the dataset identifier), so one dataset's
events stay ordered on one partition. We read binary and *structured* mode (`content-type:
application/cloudevents+json`, the value is the whole event as JSON, e.g. a dead letter's
`event` replayed by hand).
"""
from __future__ import annotations

from collections.abc import Mapping

import orjson
from cloudevents import exceptions as ce_errors
from cloudevents import kafka as ce_kafka
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

from flts.events import EventError

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")


def check_attributes(attributes: Mapping[str, object]) -> None:
    """EventError unless the attributes are those of a CloudEvents 1.0 event."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not attributes.get(a)]
    if missing:
        raise EventError(f"not a CloudEvent: missing attribute(s) {missing}")
    if attributes["specversion"] != "1.0":
        raise EventError(f"unsupported CloudEvents specversion {attributes['specversion']!r} (want 1.0)")


def _is_json(content_type: str) -> bool:
    base = content_type.split(";")[0].strip().lower()
    return base in ("", "application/json", "text/json") or base.endswith("+json")


def event_from_kafka(headers: list[tuple[str, bytes]] | None, value: bytes | None) -> CloudEvent:
    """A Kafka message (binary or structured content mode) as a CloudEvent; EventError if it is not one."""
    value = value or b""
    try:
        hdrs = {k.lower(): v.decode("utf-8") for k, v in headers or []}
    except (UnicodeDecodeError, AttributeError):
        raise EventError("not a CloudEvent: a Kafka header is not UTF-8 text") from None
    content_type = hdrs.get("content-type", "")
    try:
        if "ce_specversion" in hdrs or "ce_type" in hdrs:
            return _from_binary(hdrs, content_type, value)
        return _from_structured(content_type, value)
    except ce_errors.GenericException as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None


def _from_binary(hdrs: dict[str, str], content_type: str, value: bytes) -> CloudEvent:
    """What `cloudevents.kafka.from_binary` makes of it (with no key), without re-encoding the headers for
    it: every delivery reads one."""
    attributes = {k[3:]: v for k, v in hdrs.items() if k.startswith("ce_")}
    check_attributes(attributes)
    if "content-type" in hdrs:
        attributes["datacontenttype"] = content_type
    try:
        data = (orjson.loads(value) if value else None) if _is_json(content_type) else bytes(value)
    except orjson.JSONDecodeError as exc:
        raise ce_errors.DataUnmarshallerError(f"Failed to unmarshall data with error: {exc!r}") from None
    return CloudEvent.create(attributes, data)


def _from_structured(content_type: str, value: bytes) -> CloudEvent:
    try:
        structure = orjson.loads(value)
    except orjson.JSONDecodeError:
        structure = None
    if not isinstance(structure, dict) or "specversion" not in structure:
        raise EventError("not a CloudEvent: no ce_* headers (binary mode) and the value is not a "
                         "structured CloudEvent JSON object")
    check_attributes(structure)
    ct = {"content-type": content_type.encode()} if content_type and not content_type.startswith(
        STRUCTURED_CONTENT_TYPE) else {}
    return ce_kafka.from_structured(ce_kafka.KafkaMessage(ct, None, value),
                                    envelope_unmarshaller=lambda _raw: structure)


def kafka_key(event) -> str | None:
    """The record key of an event: the `partitionkey` extension, else the subject (the dataset identifier)."""
    return event.get("partitionkey") or event.get("subject")


def event_to_kafka(event) -> ce_kafka.KafkaMessage:
    """Binary content mode; the key is `kafka_key(event)`."""
    return ce_kafka.to_binary(
        event,
        data_marshaller=lambda data: data if isinstance(data, bytes) else orjson.dumps(data),
        key_mapper=kafka_key,
    )


def structured_dict(event) -> dict:
    return orjson.loads(to_structured(event)[1])
