"""The inference function's ASGI app (Starlette; run by uvicorn with httptools + uvloop).

Routes: POST /predict, GET /healthz, GET /readyz, GET /metrics, POST /scale_workers,
the Open Inference Protocol v2 routes under /v2, and POST / for CloudEvents
(`flts.model-selected` hot swap, `flts.inference-data` batch forecasts). The two prediction
routes (POST /predict, POST /v2/models/{name}/infer) are called by AdmissionControl with the
body and return an Answer it sends; the others go through Starlette's router.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flts import __version__
from flts.auth import EventGate, refusal
from flts.events import MAX_EVENT_BYTES
from flts.infer import prometheus as metrics
from flts.infer.admission import AdmissionControl, ClientGone, error_headers, read_body
from flts.infer.batcher import Batcher, InferenceFailed, Rejected
from flts.infer.features import RequestError, format_forecast_times, interval_scales, parse_predict, with_intervals
from flts.infer.handler import apply_event, load_champion, refresh_default
from flts.infer.model import ModelTooLarge, ServedModel
from flts.infer.registry import NO_MODEL, ModelRegistry
from flts.infer.settings import ServingSettings
from flts.infer.v2 import infer_response, model_metadata, parse_infer, split_binary
from flts.logs import log, warn
from flts.outcomes import BAD_EVENT, error_text, log_failure, status_of_exception
from flts.settings import Env
from flts.storage import InvalidKey, ObjectNotFound, ObjectStore, StorageError, store_from_env

JSON = "application/json"
_MODEL_RETRY_SECONDS = 5.0

# What a prediction route answers: (status, JSON body, extra headers); AdmissionControl sends it.
Answer = tuple[int, bytes, dict | None]


def process_started_at() -> float:
    """When this process started (wall clock, ~10 ms resolution on Linux)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


_PROCESS_STARTED = process_started_at()


def _json(status: int, body, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=JSON)


def _error(status: int, message: str, predict_style: bool = False) -> Response:
    body = {"status": "ERROR", "error": message} if predict_style else {"error": message}
    return _json(status, body, error_headers(status))


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}") from None


@functools.lru_cache(maxsize=64)
def _v2_clock(batch: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """The (last_wall, step) of a v2 batch, which carries no timestamps: built once per size, read-only."""
    last_wall, steps = np.zeros(batch), np.full(batch, step)
    last_wall.flags.writeable = steps.flags.writeable = False
    return last_wall, steps


class InferService:
    """The state behind the routes: settings, object store, served models and the batcher."""

    def __init__(self, env: Env | None = None, store: ObjectStore | None = None, registry: ModelRegistry | None = None):
        self.env = dict(os.environ) if env is None else dict(env)
        self.settings = ServingSettings.from_env(self.env)
        self.gate = EventGate(self.settings)  # POST /: EVENT_TOKEN or the cluster's OIDC tokens
        self.store = store if store is not None else store_from_env(self.env)
        self.registry = registry or ModelRegistry(self.settings.max_models, self.settings.max_model_bytes)
        self.batcher = Batcher(self.settings)
        self.cold_start_seconds: float | None = None
        self._retry_task: asyncio.Task | None = None
        self._swap_lock: asyncio.Lock | None = None
        self._loading: dict[str, asyncio.Future] = {}  # identifier → its champion's load, shared by requests
        self._requests = {}  # (route, status) → pre-bound counter child
        self._retry_after = {"Retry-After": str(self.settings.retry_after_seconds)}

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        self._swap_lock = asyncio.Lock()
        await self.batcher.start()
        if self.registry.default is None and not await self._load_promoted():
            if self.settings.require_model:
                raise RuntimeError("no promoted model could be loaded and REQUIRE_MODEL=1")
            self._retry_task = asyncio.create_task(self._retry_load())
        elif self.registry.default is not None:
            self._ready()

    async def shutdown(self) -> None:
        if self._retry_task:
            self._retry_task.cancel()
        await self.batcher.stop()

    async def _load_promoted(self) -> bool:
        """The default model from current.json (or MODEL_IDENTIFIER's pointer); False when none yet."""
        try:
            async with self._swap_lock:  # an event may be installing one meanwhile
                await asyncio.to_thread(refresh_default, self.store, self.settings, self.registry)
        except Exception as exc:  # noqa: BLE001 - not ready yet; /readyz says so and we retry
            warn("model_not_loaded", error=f"{type(exc).__name__}: {exc}")
            return False
        self._ready()
        return True

    async def _retry_load(self) -> None:
        while True:
            await asyncio.sleep(_MODEL_RETRY_SECONDS)
            if self.registry.default is not None or await self._load_promoted():
                return

    def _ready(self) -> None:
        if self.cold_start_seconds is None:
            self.cold_start_seconds = time.time() - _PROCESS_STARTED
            metrics.COLD_START.set(self.cold_start_seconds)
            log("infer_ready", cold_start_seconds=round(self.cold_start_seconds, 3), model=repr(self.registry.default),
                pid=os.getpid())

    # ------------------------------------------------------------ helpers

    def _count(self, route: str, status: int, started: float) -> None:
        child = self._requests.get((route, status))
        if child is None:  # bound once per (route, status): labels() per request costs a lock and a dict
            child = self._requests[(route, status)] = metrics.REQUESTS.labels(route, str(status))
        child.inc()
        metrics.ROUTE_LATENCY[route].observe(time.perf_counter() - started)

    def _too_busy(self, message: str) -> Answer:
        return 429, orjson.dumps({"status": "ERROR", "error": message}), self._retry_after

    async def _body(self, request: Request, limit: int, setting: str) -> bytes:
        """The body of a route AdmissionControl does not read: 413 past `limit`, 408 too slow."""
        try:
            return await read_body(request.scope, request.receive, limit, setting, self.settings.body_read_seconds)
        except ClientGone:
            raise RequestError("the client disconnected before its body arrived") from None

    async def model_for(self, identifier) -> ServedModel:
        """The default model, or the named identifier's champion (loaded on its first request)."""
        if identifier is None:
            return self.registry.get()
        if not isinstance(identifier, str):
            raise RequestError(f"'identifier' must be a string, got {type(identifier).__name__}")
        return self.registry.cached(identifier) or await self._load_champion(identifier)

    async def _load_champion(self, identifier: str) -> ServedModel:
        loading = self._loading.get(identifier)
        if loading is None:  # one load per identifier, however many requests wait for it
            loading = self._loading[identifier] = asyncio.ensure_future(
                asyncio.to_thread(load_champion, self.store, self.settings, self.registry, identifier))
            loading.add_done_callback(lambda done: self._load_finished(identifier, done))
        try:
            return await asyncio.shield(loading)
        except ObjectNotFound as exc:  # NoChampion: names the identifier and the pointer it looked for
            raise RequestError(str(exc), 404) from None
        except ModelTooLarge as exc:  # names the identifier, its size and MAX_MODEL_BYTES
            raise RequestError(str(exc), 503) from None
        except InvalidKey as exc:  # no pointer can have this name
            raise RequestError(f"no champion is promoted for identifier {identifier[:100]!r} ({exc})", 404) from None
        except (StorageError, ValueError) as exc:  # ModelError, PointerRefused, a malformed pointer
            raise RequestError(f"the champion of identifier {identifier[:100]!r} cannot be served now: {exc}",
                               503) from None

    def _load_finished(self, identifier: str, done: asyncio.Future) -> None:
        self._loading.pop(identifier, None)
        if not done.cancelled():
            done.exception()  # retrieved even when every waiting request has gone: no "never retrieved" warning

    # ------------------------------------------------------------ /predict

    async def predict(self, raw: bytes) -> Answer:
        """POST /predict, called by AdmissionControl with the body once the request is admitted."""
        started = time.perf_counter()
        status = 500
        try:
            body = _loads(raw)
            model = await self.model_for(body.get("identifier") if isinstance(body, dict) else None)
            window = parse_predict(body, model.spec, self.settings.max_rows)
            times = format_forecast_times(window)
            out = await self.batcher.submit(model, window.x[None], np.array([window.last_wall]), np.array([window.step_seconds]))
            target, info = model.spec.target, model.info
            forecast = out[0, :window.steps]
            columns = {name: values.tolist() for name, values in
                       {target: forecast, **with_intervals(forecast, model.spec, window.scale)}.items()}
            status = 200
            return 200, orjson.dumps({
                "status": "SUCCESS", "identifier": info.identifier, "model_type": info.model_type,
                "run_id": info.run_id, "config_hash": info.config_hash,
                "predictions": [{"ts": ts, **{name: values[i] for name, values in columns.items()}}
                                for i, ts in enumerate(times)],
            }), None
        except RequestError as exc:
            status = exc.status
            return status, orjson.dumps({"status": "ERROR", "error": str(exc)}), error_headers(status)
        except Rejected as exc:
            status = 429
            return self._too_busy(str(exc))
        except InferenceFailed as exc:
            return 500, orjson.dumps({"status": "ERROR", "error": f"inference failed: {exc}"}), None
        finally:
            self._count("predict", status, started)

    # ------------------------------------------------------------ operations

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # Ready means "can take events": without a model too, else a fresh cluster deadlocks
        # (the revision never turns Ready, so the flts.model-selected bringing the model never arrives).
        model = self.registry.default
        if model is None:
            return _json(200, {"status": "ready", "model": None, "reason": NO_MODEL, "served": [], "served_bytes": 0,
                               "workers": self.batcher.workers, "cold_start_seconds": None})
        spec = model.spec
        return _json(200, {"status": "ready", "model": {
            **model.info.labels(), "input_seq_len": spec.input_seq_len, "output_seq_len": spec.output_seq_len,
            # the serving contract in words: send at least history_rows rows, get up to horizon steps
            "history_rows": spec.history_rows, "horizon": spec.output_seq_len,
            "interval_levels": [level for level, _ in spec.intervals],
            "feature_columns": list(spec.feature_columns), "target": spec.target,
            "timestamp_column": spec.timestamp_column, "frequency_seconds": spec.frequency_seconds,
        }, "served": self.registry.names(), "served_bytes": self.registry.held_bytes, "workers": self.batcher.workers,
            "cold_start_seconds": self.cold_start_seconds})

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, 200, media_type=content_type)

    async def scale_workers(self, request: Request) -> Response:
        reason = refusal(request.headers.get("authorization"), self.settings.scale_workers_token)
        if reason:
            return _error(401, f"{reason} (SCALE_WORKERS_TOKEN, else EVENT_TOKEN)", predict_style=True)
        try:
            body = _loads(await self._body(request, 4096, "the /scale_workers limit"))
            workers = body.get("workers") if isinstance(body, dict) else None
            if type(workers) is not int or not 1 <= workers <= self.settings.max_workers:
                raise RequestError(f"'workers' must be an integer from 1 to {self.settings.max_workers} (MAX_WORKERS)")
        except RequestError as exc:
            return _error(exc.status, str(exc), predict_style=True)
        previous = await self.batcher.scale(workers)
        log("workers_scaled", workers=workers, previous=previous)
        return _json(200, {"workers": workers, "previous": previous, "max_workers": self.settings.max_workers})

    # ------------------------------------------------------------ CloudEvents

    async def _event_refusal(self, authorization: str | None):
        if not self.gate.settings.oidc_audience:
            return self.gate.refusal(authorization)
        return await asyncio.to_thread(self.gate.refusal, authorization)  # it may fetch the cluster's keys

    async def cloudevent(self, request: Request) -> Response:
        from cloudevents.http import from_http

        denied = await self._event_refusal(request.headers.get("authorization"))
        if denied:  # an event changes what is served: only the stack's senders may post one
            return _error(denied.status, denied.reason)
        try:
            body = await self._body(request, MAX_EVENT_BYTES, "MAX_EVENT_BYTES")
            event = from_http(dict(request.headers), body)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - the SDK raises several types for malformed events
            return _json(BAD_EVENT, {"error": f"not a valid CloudEvent: {exc}"})
        try:
            async with self._swap_lock:  # one swap at a time; requests keep flowing meanwhile
                result = await asyncio.to_thread(apply_event, event, self.store, self.settings, self.registry)
        except Exception as exc:  # noqa: BLE001 - flts.outcomes gives each failure the status that tells the caller
            if not isinstance(exc, ObjectNotFound):  # that one the handler logged; the current model keeps serving
                log_failure(event, exc)
            return _json(status_of_exception(exc), {"error": error_text(exc)})
        if self.registry.default is not None:
            self._ready()
        log("event_handled", event_type=event["type"], event_id=event["id"], **result)
        return Response(status_code=202)

    # ------------------------------------------------------------ Open Inference Protocol v2

    async def v2_server(self, request: Request) -> Response:
        return _json(200, {"name": "flts-infer", "version": __version__, "extensions": []})

    async def v2_live(self, request: Request) -> Response:
        return _json(200, {"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.registry.default is not None
        return _json(200 if ready else 503, {"ready": ready})

    async def _v2_model(self, request: Request) -> ServedModel:
        return await self.model_for(request.path_params["name"])

    async def v2_model(self, request: Request) -> Response:
        try:
            return _json(200, model_metadata(await self._v2_model(request)))
        except RequestError as exc:
            return _error(exc.status, str(exc))

    async def v2_model_ready(self, request: Request) -> Response:
        try:
            model = await self._v2_model(request)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        return _json(200, {"name": model.info.identifier, "ready": True})

    async def v2_infer(self, name: str, raw: bytes, header_length: str | None = None) -> Answer:
        """POST /v2/models/{name}/infer, called by AdmissionControl like predict; `header_length`:
        its Inference-Header-Content-Length (binary tensor data after the JSON)."""
        started = time.perf_counter()
        status = 500
        try:
            model = self.registry.cached(name) or await self._load_champion(name)  # a path segment: a str
            text, binary = split_binary(raw, header_length)
            request = parse_infer(_loads(text), model, self.settings.max_rows, binary)
            x = request.x
            out = await self.batcher.submit(model, x, *_v2_clock(len(x), model.spec.frequency_seconds or 60.0))
            status = 200
            return 200, *infer_response(model, out, request, interval_scales(x, model.spec))
        except RequestError as exc:
            status = exc.status
            return status, orjson.dumps({"error": str(exc)}), error_headers(status)
        except Rejected as exc:
            status = 429
            return self._too_busy(str(exc))
        except InferenceFailed as exc:
            return 500, orjson.dumps({"error": f"inference failed: {exc}"}), None
        finally:
            self._count("v2_infer", status, started)

    # ------------------------------------------------------------ the app

    def routes(self) -> list[Route]:
        """Everything but the prediction routes, which AdmissionControl answers before routing."""
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/scale_workers", self.scale_workers, methods=["POST"]),
            Route("/", self.cloudevent, methods=["POST"]),
            Route("/v2", self.v2_server, methods=["GET"]),
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2/models/{name}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.v2_model_ready, methods=["GET"]),
        ]


def create_app(env: Env | None = None, store: ObjectStore | None = None, registry: ModelRegistry | None = None) -> Starlette:
    """The ASGI app; `app.state.service` is its InferService."""
    service = InferService(env, store, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    app = InferApp(service, routes=service.routes(), lifespan=lifespan)
    app.state.service = service
    return app


class InferApp(Starlette):
    """Starlette whose prediction routes AdmissionControl answers before any of Starlette's own
    layers (error middleware, router): each costs throughput a fast model notices (issue 13).
    Everything else, lifespan included, goes through Starlette as usual."""

    def __init__(self, service: InferService, **options):
        super().__init__(**options)
        self.admission = AdmissionControl(super().__call__, service)

    async def __call__(self, scope, receive, send):
        await self.admission(scope, receive, send)
