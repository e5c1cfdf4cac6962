"""The served models. A swap replaces one reference, so it is atomic: a request holds the
model it started with until it finishes, and the next request sees the new one.

The default model answers requests that name no identifier: the newest promotion, or with
MODEL_IDENTIFIER set, that identifier's newest one. A request (or a v2 model name) that
names an identifier gets that identifier's model. Bounded by MAX_MODELS: the least
recently installed non-default model is dropped first.
"""
from __future__ import annotations

import threading
from datetime import datetime

from flts.infer.features import RequestError
from flts.infer.model import ServedModel


def _when(timestamp: str):
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


class ModelRegistry:
    def __init__(self, max_models: int = 4):
        self.max_models = max_models
        self.default: ServedModel | None = None
        self._by_identifier: dict[str, ServedModel] = {}
        self._lock = threading.Lock()  # installs may come from the event loop or a handler thread

    def get(self, identifier: str | None = None) -> ServedModel:
        if identifier is None:
            model = self.default
            if model is None:
                raise RequestError("no model is loaded yet (see /readyz)", status=503)
            return model
        if not isinstance(identifier, str):
            raise RequestError(f"'identifier' must be a string, got {type(identifier).__name__}")
        model = self._by_identifier.get(identifier)
        if model is None:
            raise RequestError(f"no model is served for identifier {identifier[:100]!r} "
                               f"(served: {sorted(self._by_identifier)})", status=404)
        return model

    def names(self) -> list[str]:
        return sorted(self._by_identifier)

    def is_stale(self, model_info) -> str | None:
        """Why installing this model would be a step back, or None when it is news."""
        current = self._by_identifier.get(model_info.identifier)
        if current is None:
            return None
        if (current.info.run_id, current.info.artifact_key) == (model_info.run_id, model_info.artifact_key):
            return "already served"
        new, old = _when(model_info.timestamp), _when(current.info.timestamp)
        if new and old and new.tzinfo == old.tzinfo and new < old:
            return f"older than the served promotion ({model_info.timestamp} < {current.info.timestamp})"
        return None

    def install(self, model: ServedModel, make_default: bool = True) -> ServedModel | None:
        """Serve `model` for its identifier (and as the default); returns the one it replaced."""
        with self._lock:
            previous = self._by_identifier.get(model.info.identifier)
            models = dict(self._by_identifier)
            models.pop(model.info.identifier, None)
            models[model.info.identifier] = model  # newest last
            default = model if make_default or self.default is None or self.default is previous else self.default
            for identifier in [i for i, m in models.items() if m is not default][: max(0, len(models) - self.max_models)]:
                del models[identifier]  # the oldest first, never the default
            self._by_identifier = models  # one reference assignment: readers never see a half-update
            self.default = default
        return previous
