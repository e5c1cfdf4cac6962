"""Which model to serve: the promotion pointers in PROMOTION_BUCKET, never an event's word.

Anyone who reaches `POST /` could forge a `flts.model-selected` event, so the event is only
a notice that a promotion happened (issue 12, H1). What is served comes from the pointers
eval writes (flts.promotion):

- `<identifier>/current.json`: that identifier's champion (a request naming it, its events);
- `current.json` (then `global/current.json`): the default, for requests naming no
  identifier, or with MODEL_IDENTIFIER set, that identifier's champion.

A pointer dated in the future (beyond MAX_CLOCK_SKEW_SECONDS) is refused: it would look
newer than every real promotion. Artifacts are read only from the buckets the settings name.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import NoReturn

from flts.events import PromotionPointer
from flts.infer.model import ModelError
from flts.infer.settings import ServingSettings
from flts.logs import error
from flts.promotion import current_key, resolve_pointer
from flts.storage import ObjectNotFound, ObjectStore, get_json


class PointerRefused(ModelError):
    """A pointer or event infer will not act on (400 for an event: retrying will not help)."""


class NoChampion(ObjectNotFound):
    """No champion is promoted for an identifier (404 for a request, 422 for an event)."""

    def __init__(self, identifier: str, bucket: str, key: str, why: str | None = None):
        super().__init__(bucket, key)
        self.identifier = identifier
        self.args = (f"no champion is promoted for identifier {identifier[:100]!r} ({why or f'no {bucket}/{key}'})",)


def champion_pointer(store: ObjectStore, settings: ServingSettings, identifier: str) -> PromotionPointer:
    """The identifier's own champion, `<identifier>/current.json`: never another identifier's."""
    bucket, key = settings.promotion_bucket, current_key(identifier)
    try:
        pointer = PromotionPointer.model_validate(get_json(store, bucket, key))
    except ObjectNotFound:
        raise NoChampion(identifier, bucket, key) from None
    if pointer.identifier != identifier:
        raise NoChampion(identifier, bucket, key, f"{bucket}/{key} names identifier {pointer.identifier!r}")
    return checked(pointer, settings)


def default_pointer(store: ObjectStore, settings: ServingSettings) -> PromotionPointer:
    """The default model's pointer: MODEL_IDENTIFIER's own champion (never another identifier's), else
    the one in current.json."""
    if settings.model_identifier:
        return champion_pointer(store, settings, settings.model_identifier)
    return resolved_pointer(store, settings, None)


def resolved_pointer(store: ObjectStore, settings: ServingSettings, identifier: str | None) -> PromotionPointer:
    """The first pointer in flts.promotion's resolution order, checked."""
    return checked(resolve_pointer(store, settings.promotion_bucket, identifier), settings)


def checked(pointer: PromotionPointer, settings: ServingSettings) -> PromotionPointer:
    """The pointer, if infer may act on it; PointerRefused (logged) says why not."""
    what = f"the promotion pointer of {pointer.identifier} (run {pointer.run_id})"
    refuse_future(pointer.timestamp, settings, what)
    allowed = settings.allowed_artifact_buckets
    if pointer.artifact_bucket not in allowed:
        _refuse(f"{what} names artifact bucket {pointer.artifact_bucket[:100]!r}; infer loads artifacts only "
                f"from {list(allowed)} (PROMOTION_BUCKET, ARTIFACT_BUCKETS)")
    return pointer


def refuse_future(timestamp: str, settings: ServingSettings, what: str) -> None:
    """PointerRefused when `timestamp` is not a time or lies beyond the clock-skew allowance."""
    when = _parse_time(timestamp)
    if when is None:
        _refuse(f"{what} has timestamp {timestamp[:60]!r}, which is not an ISO 8601 time")
    ahead = (when - datetime.now(UTC)).total_seconds()
    if ahead > settings.max_clock_skew_seconds:
        _refuse(f"{what} is dated {timestamp}, {ahead:.0f} s in the future (more than MAX_CLOCK_SKEW_SECONDS="
                f"{settings.max_clock_skew_seconds:g}); refused, so it cannot outrank real promotions")


def _parse_time(timestamp: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # eval writes UTC


def _refuse(message: str) -> NoReturn:
    error("promotion_refused", error=message)
    raise PointerRefused(message)
