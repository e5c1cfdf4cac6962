"""Promotion pointers in the `model-promotion` bucket (layout: docs/design.md principle 8).

    <identifier|global>/<config_hash>/promotion-<ts>.json   history, one object per promotion
    <identifier|global>/current.json                         the scope's current pointer
    current.json                                             the newest promotion of all

Eval writes them; infer resolves `current.json` → `global/current.json` →
`<identifier>/current.json` (or the identifier's own pointer first when a request names one).
"""
from __future__ import annotations

from flts.events import PromotionPointer
from flts.settings import Env, PromotionBucket
from flts.storage import ObjectNotFound, ObjectStore, get_json

GLOBAL = "global"


def promotion_bucket(env: Env) -> str:
    return PromotionBucket.from_env(env).promotion_bucket


def history_key(scope: str, config_hash: str, timestamp: str) -> str:
    safe_ts = timestamp.replace(":", "").replace("+", "Z")
    return f"{scope}/{config_hash}/promotion-{safe_ts}.json"


def current_key(scope: str | None = None) -> str:
    return f"{scope}/current.json" if scope else "current.json"


def resolution_order(identifier: str | None = None) -> list[str]:
    if identifier:
        return [current_key(identifier), current_key(), current_key(GLOBAL)]
    return [current_key(), current_key(GLOBAL)]


def resolve_pointer(store: ObjectStore, bucket: str, identifier: str | None = None) -> PromotionPointer:
    """The first pointer found in resolution order; ObjectNotFound names every key tried."""
    for key in resolution_order(identifier):
        try:
            return PromotionPointer.model_validate(get_json(store, bucket, key))
        except ObjectNotFound:
            continue
    raise ObjectNotFound(bucket, " | ".join(resolution_order(identifier)))
