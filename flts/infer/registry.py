"""The served models. A swap replaces one reference, so it is atomic: a request holds the
model it started with until it finishes, and the next request sees the new one.

- The default answers requests that name no identifier: the champion in `current.json`
  (with MODEL_IDENTIFIER set, that identifier's champion; flts.infer.pointers).
- Each identifier a request (or an event) names gets its own champion, held here once
  loaded, in an LRU with two bounds: at most MAX_MODELS identifiers, and at most
  MAX_MODEL_BYTES of artifacts. The least recently used goes first until both hold; the
  default is never dropped and does not count towards MAX_MODEL_BYTES (a model larger than
  that is refused before it is loaded: flts.infer.model.load_model).

Installs come from the event loop or a handler thread (a lock); reads take no lock.
"""
from __future__ import annotations

import threading
import time

from flts.events import PromotionPointer
from flts.infer.features import RequestError
from flts.infer.model import ServedModel

NO_MODEL = ("no model is loaded yet: /predict answers once a model is promoted (a flts.model-selected event, "
            "or a promotion found at start)")


class ModelRegistry:
    def __init__(self, max_models: int = 1000, max_bytes: int = 256 * 1024 * 1024):
        self.max_models, self.max_bytes = max_models, max_bytes
        self.default: ServedModel | None = None
        self._by_identifier: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def get(self, identifier: str | None = None) -> ServedModel:
        """The default (503 before there is one), or a held identifier's model (404 when not held)."""
        model = self.default if identifier is None else self.cached(identifier)
        if model is None:
            raise (RequestError(NO_MODEL, 503) if identifier is None else
                   RequestError(f"no model is held for identifier {identifier[:100]!r} (held: {self.names()})", 404))
        return model

    def cached(self, identifier: str) -> ServedModel | None:
        """The identifier's model if held (and marked as used), else None."""
        model = self._by_identifier.get(identifier)
        if model is not None:
            model.last_used = time.monotonic()
        return model

    def names(self) -> list[str]:
        return sorted(self._by_identifier)

    @property
    def held_bytes(self) -> int:
        """Artifact bytes of the held models that count towards MAX_MODEL_BYTES (all but the default)."""
        return sum(m.size_bytes for m in self._by_identifier.values() if m is not self.default)

    def held(self, pointer: PromotionPointer) -> ServedModel | None:
        """A held model loaded from this pointer's run and artifact (no need to load it again)."""
        wanted = (pointer.run_id, pointer.artifact_bucket, pointer.artifact_key)
        for model in (self.default, *self._by_identifier.values()):
            if model is not None and model.info.source == wanted:
                return model
        return None

    def install(self, identifier: str, model: ServedModel, replace: bool = True) -> list[ServedModel]:
        """Serve `model` for `identifier` (replace=False: unless one is held already, e.g. a
        newer one an event installed while a request loaded this). Returns the models dropped."""
        with self._lock:
            if not replace and identifier in self._by_identifier:
                return []
            before = self._held_models()
            models = dict(self._by_identifier)
            models[identifier] = model
            model.last_used = time.monotonic()
            self._by_identifier = self._bounded(models)  # one reference assignment: readers never see a half-update
            return self._dropped(before)

    def install_default(self, model: ServedModel) -> list[ServedModel]:
        """Serve `model` to requests naming no identifier. Returns the models dropped."""
        with self._lock:
            before = self._held_models()
            self.default = model
            self._by_identifier = self._bounded(dict(self._by_identifier))  # the old default now counts
            return self._dropped(before)

    def _bounded(self, models: dict[str, ServedModel]) -> dict[str, ServedModel]:
        """Drop the least recently used (never the default) until both bounds hold."""
        total = sum(m.size_bytes for m in models.values() if m is not self.default)
        if len(models) <= self.max_models and total <= self.max_bytes:
            return models
        for _, identifier in sorted((m.last_used, i) for i, m in models.items() if m is not self.default):
            total -= models.pop(identifier).size_bytes
            if len(models) <= self.max_models and total <= self.max_bytes:
                break
        return models

    def _held_models(self) -> list[ServedModel]:
        return [m for m in (self.default, *self._by_identifier.values()) if m is not None]

    def _dropped(self, before: list[ServedModel]) -> list[ServedModel]:
        now = {id(m) for m in self._held_models()}  # by identity, in linear time: a fleet holds thousands
        return list({id(m): m for m in before if id(m) not in now}.values())
