"""What the gateway emits (`flts.dataset.ready`), and the CloudEvent handler its spec names: the
gateway takes no events, so that one refuses all of them (400)."""
from __future__ import annotations

from flts import events
from flts.events import EventError


def dataset_ready(event_id: str, bucket: str, object_key: str, identifier: str, test_object_key: str | None):
    """The upload's announcement; its id is the upload's (the same bytes give the same id)."""
    ready = events.DatasetReady(bucket=bucket, object_key=object_key, identifier=identifier,
                                test_object_key=test_object_key)
    event = events.make_event(events.DATASET_READY, "gateway", ready)
    event["id"] = event_id
    return event


def handle(event, env) -> list:
    raise EventError(f"the gateway takes no events, got {event['type']!r}: upload with POST /upload/<identifier>")
