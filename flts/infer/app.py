"""The inference function's ASGI app (Starlette; run by uvicorn with httptools + uvloop).

Routes: POST /predict, GET /healthz, GET /readyz, GET /metrics, POST /scale_workers,
the Open Inference Protocol v2 routes under /v2, and POST / for CloudEvents
(`flts.model-selected` hot swap, `flts.inference-data` batch forecasts).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flts import __version__
from flts.events import MAX_EVENT_BYTES
from flts.infer import prometheus as metrics
from flts.infer.batcher import Batcher, InferenceFailed, Rejected
from flts.infer.features import RequestError, format_forecast_times, parse_predict, with_intervals
from flts.infer.handler import apply_event, mark_served
from flts.infer.model import resolve_and_load
from flts.infer.registry import ModelRegistry
from flts.infer.settings import ServingSettings
from flts.infer.v2 import infer_response, model_metadata, parse_infer
from flts.logs import log, warn
from flts.outcomes import BAD_EVENT, error_text, log_failure, status_of_exception
from flts.settings import Env
from flts.storage import ObjectNotFound, ObjectStore, store_from_env

JSON = "application/json"
NO_MODEL = ("no model is loaded yet: /predict answers once a model is promoted (a flts.model-selected event, "
            "or a promotion found at start)")
_MODEL_RETRY_SECONDS = 5.0


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


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}") from None


class InferService:
    """The state behind the routes: settings, object store, served models and the batcher."""

    def __init__(self, env: Env | None = None, store: ObjectStore | None = None, registry: ModelRegistry | None = None):
        self.env = dict(os.environ) if env is None else dict(env)
        self.settings = ServingSettings.from_env(self.env)
        self.store = store if store is not None else store_from_env(self.env)
        self.registry = registry or ModelRegistry(self.settings.max_models)
        self.batcher = Batcher(self.settings)
        self.cold_start_seconds: float | None = None
        self._retry_task: asyncio.Task | None = None
        self._swap_lock: asyncio.Lock | None = None
        self._requests = {}  # (route, status) → pre-bound counter child

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
        try:
            model = await asyncio.to_thread(resolve_and_load, self.store, self.settings)
        except Exception as exc:  # noqa: BLE001 - not ready yet; /readyz says so and we retry
            warn("model_not_loaded", error=f"{type(exc).__name__}: {exc}")
            return False
        if self.registry.default is None:  # an event may have installed a newer one meanwhile
            mark_served(model, self.registry.install(model))
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
        if child is None:
            child = self._requests[(route, status)] = metrics.REQUESTS.labels(route, str(status))
        child.inc()
        if route == "predict":
            metrics.PREDICT_LATENCY.observe(time.perf_counter() - started)
        else:
            metrics.LATENCY.labels(route).observe(time.perf_counter() - started)

    def _too_busy(self, message: str) -> Response:
        return _json(429, {"status": "ERROR", "error": message},
                     {"Retry-After": str(self.settings.retry_after_seconds)})

    async def _body(self, request: Request, limit: int, setting: str = "MAX_BODY_BYTES") -> bytes:
        """The body, refused with 413 before parsing when it passes `limit`."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(f"invalid Content-Length {declared[:20]!r}")
            if int(declared) > limit:
                raise RequestError(f"the body of {declared} bytes is over the limit of {limit} bytes ({setting})", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"the body is over the limit of {limit} bytes ({setting})", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _infer(self, model, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        out = await self.batcher.submit(model, x, last_wall, step)
        if not np.all(np.isfinite(out)):
            raise RequestError("the model produced a non-finite forecast for this input (values far out of range?)", 422)
        return out

    # ------------------------------------------------------------ /predict

    async def predict(self, request: Request) -> Response:
        """Admitted by AdmissionControl already."""
        started = time.perf_counter()
        status = 500
        try:
            if self.registry.default is None:  # ready for events, not yet for predictions
                raise RequestError(NO_MODEL, 503)
            body = _loads(await self._body(request, self.settings.max_body_bytes))
            model = self.registry.get(body.get("identifier") if isinstance(body, dict) else None)
            window = parse_predict(body, model.spec, self.settings.max_rows)
            times = format_forecast_times(window)
            out = await self._infer(model, window.x[None], np.array([window.last_wall]), np.array([window.step_seconds]))
            target, info = model.spec.target, model.info
            forecast = out[0, :window.steps]
            columns = {name: values.tolist() for name, values in
                       {target: forecast, **with_intervals(forecast, model.spec)}.items()}
            status = 200
            return _json(200, {
                "status": "SUCCESS", "identifier": info.identifier, "model_type": info.model_type,
                "run_id": info.run_id, "config_hash": info.config_hash,
                "predictions": [{"ts": ts, **{name: values[i] for name, values in columns.items()}}
                                for i, ts in enumerate(times)],
            })
        except RequestError as exc:
            status = exc.status
            return _json(status, {"status": "ERROR", "error": str(exc)})
        except Rejected as exc:
            status = 429
            return self._too_busy(str(exc))
        except InferenceFailed as exc:
            return _json(500, {"status": "ERROR", "error": f"inference failed: {exc}"})
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
            return _json(200, {"status": "ready", "model": None, "reason": NO_MODEL, "served": [],
                               "workers": self.batcher.workers, "cold_start_seconds": None})
        spec = model.spec
        return _json(200, {"status": "ready", "model": {
            **model.info.labels(), "input_seq_len": spec.input_seq_len, "output_seq_len": spec.output_seq_len,
            # the serving contract in words: send at least history_rows rows, get up to horizon steps
            "history_rows": spec.input_seq_len, "horizon": spec.output_seq_len,
            "interval_levels": [level for level, _ in spec.intervals],
            "feature_columns": list(spec.feature_columns), "target": spec.target,
            "timestamp_column": spec.timestamp_column, "frequency_seconds": spec.frequency_seconds,
        }, "served": self.registry.names(), "workers": self.batcher.workers,
            "cold_start_seconds": self.cold_start_seconds})

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, 200, media_type=content_type)

    async def scale_workers(self, request: Request) -> Response:
        token = self.settings.scale_token
        if token:
            given = request.headers.get("x-scale-token") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _json(401, {"status": "ERROR", "error": "a valid token is required (SCALE_WORKERS_TOKEN)"})
        try:
            body = _loads(await self._body(request, 4096, "the /scale_workers limit"))
            workers = body.get("workers") if isinstance(body, dict) else None
            if type(workers) is not int or not 1 <= workers <= self.settings.max_workers:
                raise RequestError(f"'workers' must be an integer from 1 to {self.settings.max_workers} (MAX_WORKERS)")
        except RequestError as exc:
            return _json(exc.status, {"status": "ERROR", "error": str(exc)})
        previous = await self.batcher.scale(workers)
        log("workers_scaled", workers=workers, previous=previous)
        return _json(200, {"workers": workers, "previous": previous, "max_workers": self.settings.max_workers})

    # ------------------------------------------------------------ CloudEvents

    async def cloudevent(self, request: Request) -> Response:
        from cloudevents.http import from_http

        try:
            body = await self._body(request, MAX_EVENT_BYTES, "MAX_EVENT_BYTES")
            event = from_http(dict(request.headers), body)
        except RequestError as exc:
            return _json(exc.status, {"error": str(exc)})
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

    def _v2_model(self, request: Request):
        return self.registry.get(request.path_params["name"])

    async def v2_model(self, request: Request) -> Response:
        try:
            return _json(200, model_metadata(self._v2_model(request)))
        except RequestError as exc:
            return _json(exc.status, {"error": str(exc)})

    async def v2_model_ready(self, request: Request) -> Response:
        try:
            model = self._v2_model(request)
        except RequestError as exc:
            return _json(exc.status, {"error": str(exc)})
        return _json(200, {"name": model.info.identifier, "ready": True})

    async def v2_infer(self, request: Request) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            model = self._v2_model(request)
            x, request_id = parse_infer(_loads(await self._body(request, self.settings.max_body_bytes)),
                                        model, self.settings.max_rows)
            batch = len(x)
            out = await self._infer(model, x, np.zeros(batch), np.full(batch, model.spec.frequency_seconds or 60.0))
            status = 200
            return _json(200, infer_response(model, out, request_id))
        except RequestError as exc:
            status = exc.status
            return _json(status, {"error": str(exc)})
        except Rejected as exc:
            status = 429
            return self._too_busy(str(exc))
        except InferenceFailed as exc:
            return _json(500, {"error": f"inference failed: {exc}"})
        finally:
            self._count("v2_infer", status, started)

    # ------------------------------------------------------------ the app

    def routes(self) -> list[Route]:
        return [
            Route("/predict", self.predict, methods=["POST"]),
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
            Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
        ]


class AdmissionControl:
    """Pure ASGI middleware: the MAX_INFLIGHT check before routing, body reading or any
    object is built, so an answer over the limit costs next to nothing (429 + Retry-After).
    Admitted requests are released here when their handler returns (it counts them)."""

    def __init__(self, app, service: InferService):
        self.app, self.service = app, service
        settings = service.settings
        self.body = orjson.dumps({"status": "ERROR", "error": f"over the concurrency limit of {settings.max_inflight} "
                                                               f"(MAX_INFLIGHT); retry after {settings.retry_after_seconds} s"})
        self.start = {"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", JSON.encode()), (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", str(settings.retry_after_seconds).encode())]}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            route = "predict" if path == "/predict" else "v2_infer" if path.startswith("/v2/") and path.endswith("/infer") else None
            if route:
                batcher = self.service.batcher
                if not batcher.try_admit():
                    started = time.perf_counter()
                    await send(self.start)
                    await send({"type": "http.response.body", "body": self.body})
                    self.service._count(route, 429, started)
                    return
                try:
                    await self.app(scope, receive, send)
                finally:
                    batcher.release()
                return
        await self.app(scope, receive, send)


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

    app = Starlette(routes=service.routes(), lifespan=lifespan, middleware=[Middleware(AdmissionControl, service=service)])
    app.state.service = service
    return app
