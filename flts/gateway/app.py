"""The gateway's HTTP surface (docs/contracts.md, "The gateway"):

    POST /upload/{identifier}[?test=<id>]   a CSV, streamed into the raw-data bucket → flts.dataset.ready, 202
    POST /                              400: the gateway takes no CloudEvents
    POST /upload/{identifier}?part=test     its test file, stored only: 201 with the id to pass as ?test=
    GET  /pipelines/{identifier}            the newest upload's stages, the champion, the dead letters (JSON)
    GET  /download/{processed|promotion|inference}/{key}   an object of that bucket
    GET  /download/model/{identifier}       the champion's serving artifact;  /download/pointer/{identifier}
    GET  /plot/{identifier}.png             the champion's forecast vs actual (its MLflow run's plot)
    GET  /                                  the status page;  GET /healthz, /readyz

Upload and download need `Authorization: Bearer <GATEWAY_TOKEN>` (else EVENT_TOKEN's) when one is
set; the pipelines, the plot and the page are read-only and open.
"""
from __future__ import annotations

import os
import urllib.parse

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from flts.auth import event_token, refusal
from flts.gateway import handler, page, status, uploads
from flts.gateway.emit import Emitter, Refused, Unavailable, emitter_from_env
from flts.gateway.settings import GatewaySettings
from flts.logs import log
from flts.promotion import current_key
from flts.settings import Env
from flts.storage import InvalidKey, ObjectNotFound, ObjectStore, StorageError, get_json, put_json, store_from_env


def _json(status_code: int, body, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code, headers=headers, media_type="application/json")


def _error(status_code: int, message: str, headers: dict | None = None) -> Response:
    return _json(status_code, {"error": message}, headers)


class Gateway:
    def __init__(self, env: Env, store: ObjectStore, emit: Emitter):
        self.settings = GatewaySettings.from_env(env)
        self.token = self.settings.token.strip() or event_token(env)
        self.store, self.emit = store, emit
        self.sources = status.Sources(store, self.settings)
        self.inflight = 0

    # ------------------------------------------------------------------ helpers
    def denied(self, request: Request) -> Response | None:
        why = refusal(request.headers.get("authorization"), self.token)
        return _error(401, why, {"WWW-Authenticate": "Bearer"}) if why else None

    def busy(self) -> Response:
        return _error(429, f"{self.settings.max_inflight} requests in flight (MAX_INFLIGHT); try again",
                      {"Retry-After": str(self.settings.retry_after)})

    # ------------------------------------------------------------------ upload
    async def upload(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        if self.inflight >= self.settings.max_inflight:
            return self.busy()
        self.inflight += 1
        try:
            return await self._upload(request)
        except uploads.UploadError as exc:
            # the rest of a refused body stays unread: close the connection rather than read past it
            return _error(exc.status, str(exc), {"Connection": "close"})
        finally:
            self.inflight -= 1

    async def _upload(self, request: Request) -> Response:
        identifier = uploads.check_identifier(request.path_params["identifier"])
        part = request.query_params.get("part", "train")
        if part not in ("train", "test"):
            raise uploads.UploadError(400, f"part must be train or test, got {part!r}")
        test_key = None
        if part == "train" and request.query_params.get("test"):
            test_key = uploads.test_key(identifier, request.query_params["test"])
            if not await run_in_threadpool(self.store.exists, self.settings.raw_bucket, test_key):
                raise uploads.UploadError(400, f"no test file {test_key}: POST it with ?part=test first")
        declared = request.headers.get("content-length")
        received = await uploads.receive(request.stream(), self.settings.max_bytes,
                                         int(declared) if declared and declared.isdigit() else None)
        try:
            key = (uploads.test_key if part == "test" else uploads.train_key)(identifier, received.content_id)
            await run_in_threadpool(self._store_file, key, received.path)
        finally:
            os.unlink(received.path)
        if part == "test":
            return _json(201, {"test": received.content_id, "object_key": key, "bytes": received.size,
                               "next": f"POST /upload/{identifier}?test={received.content_id} with the training CSV"})
        return await run_in_threadpool(self._announce, request, identifier, key, test_key, received)

    def _store_file(self, key: str, path: str) -> None:
        self.store.ensure_bucket(self.settings.raw_bucket)
        self.store.put_file(self.settings.raw_bucket, key, path, "text/csv")

    def _announce(self, request: Request, identifier: str, key: str, test_key: str | None,
                  received: uploads.Received) -> Response:
        """Emit flts.dataset.ready once per content: its id comes from the bytes, and the upload's
        record (written after the event is out) makes a repeat answer without emitting again."""
        event_id = uploads.upload_id(identifier, received.sha256, test_key)
        record_key = uploads.record_key(identifier, event_id)
        status_url = str(request.url_for("pipelines", identifier=identifier))
        answer = {"id": event_id, "identifier": identifier, "status_url": status_url,
                  "bucket": self.settings.raw_bucket, "object_key": key, "test_object_key": test_key,
                  "bytes": received.size, "sha256": received.sha256}
        try:
            record = get_json(self.store, self.settings.raw_bucket, record_key)
            return _json(202, {**answer, "time": record["time"], "duplicate": True}, {"Location": status_url})
        except ObjectNotFound:
            pass
        event = handler.dataset_ready(event_id, self.settings.raw_bucket, key, identifier, test_key)
        try:
            self.emit(event)
        except Unavailable as exc:
            log("gateway_emit_unavailable", level="warning", identifier=identifier, error=str(exc))
            return _error(503, f"the upload is stored, but its event could not be written (Kafka or the "
                               f"ingress is down): retry the same upload later ({exc})",
                          {"Retry-After": str(self.settings.retry_after)})
        except Refused as exc:
            return _error(502, str(exc))
        record = {"id": event_id, "time": event["time"], "train_key": key, "test_key": test_key,
                  "sha256": received.sha256, "bytes": received.size}
        put_json(self.store, self.settings.raw_bucket, record_key, record)
        log("gateway_upload", identifier=identifier, event_id=event_id, bytes=received.size)
        return _json(202, {**answer, "time": event["time"], "duplicate": False}, {"Location": status_url})

    # ------------------------------------------------------------------ read-only
    async def pipelines(self, request: Request) -> Response:
        try:
            identifier = uploads.check_identifier(request.path_params["identifier"])
        except uploads.UploadError as exc:
            return _error(400, str(exc))
        report = await run_in_threadpool(self._report, identifier)
        if report["upload"] is None and report["champion"] is None:
            return _error(404, f"nothing known about {identifier!r}: no upload and no champion")
        return _json(200, report)

    def _report(self, identifier: str) -> dict:
        return status.pipeline(self.sources, identifier, self.sources.dead_letters())

    async def index(self, request: Request) -> Response:
        def build() -> list[dict]:
            letters = self.sources.dead_letters()
            return [status.pipeline(self.sources, i, letters) for i in self.sources.identifiers()]
        return HTMLResponse(page.render(await run_in_threadpool(build), kafka=bool(self.settings.kafka)))

    async def plot(self, request: Request) -> Response:
        try:
            identifier = uploads.check_identifier(request.path_params["identifier"])
        except uploads.UploadError as exc:
            return _error(400, str(exc))
        pointer = await run_in_threadpool(self.sources.pointer, identifier)
        if pointer is None:
            return _error(404, f"no champion for {identifier!r}")
        try:
            png = await run_in_threadpool(self.sources.plot, pointer["run_id"])
        except ObjectNotFound as exc:
            return _error(404, f"the champion's run has no {status.PLOT}: {exc}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ download
    async def download(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        kind, rest = request.path_params["kind"], request.path_params["rest"]
        try:
            bucket, key = await run_in_threadpool(self._locate, kind, rest)
            data = await run_in_threadpool(self.store.get_bytes, bucket, key)
        except (InvalidKey, uploads.UploadError) as exc:
            return _error(400, str(exc))
        except ObjectNotFound as exc:
            return _error(404, str(exc))
        except StorageError as exc:
            return _error(502, str(exc))
        name = urllib.parse.quote(key.rsplit("/", 1)[-1])
        return Response(data, media_type=_media_type(key),
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}"})

    def _locate(self, kind: str, rest: str) -> tuple[str, str]:
        """(bucket, key) of a download; the key is validated as flts.storage does (no '..', no leading '/')."""
        buckets = {"processed": self.settings.processed_bucket, "promotion": self.settings.promotion_bucket,
                   "inference": self.settings.inference_log_bucket}
        if kind in buckets:
            return buckets[kind], _key(rest)
        if kind == "pointer":
            return self.settings.promotion_bucket, current_key(uploads.check_identifier(rest))
        if kind == "model":
            identifier = uploads.check_identifier(rest)
            pointer = get_json(self.store, self.settings.promotion_bucket, current_key(identifier))
            if pointer.get("artifact_bucket") != self.settings.promotion_bucket:
                raise InvalidKey(f"the pointer names bucket {pointer.get('artifact_bucket')!r}, not "
                                 f"{self.settings.promotion_bucket!r}")
            return self.settings.promotion_bucket, _key(pointer["artifact_key"])
        raise uploads.UploadError(400, f"unknown download {kind!r}: use processed, promotion, inference, model or "
                                       f"pointer")


def _key(raw: str) -> str:
    from flts.storage import validate_key

    return validate_key(urllib.parse.unquote(raw))


def _media_type(key: str) -> str:
    for suffix, media in ((".json", "application/json"), (".csv", "text/csv"), (".png", "image/png")):
        if key.endswith(suffix):
            return media
    return "application/octet-stream"


async def _ok(request: Request) -> Response:
    return _json(200, {"status": "ok"})


async def _no_events(request: Request) -> Response:
    return _error(400, "the gateway takes no CloudEvents: upload with POST /upload/<identifier>")


def create_app(env: Env | None = None, store: ObjectStore | None = None, emit: Emitter | None = None) -> Starlette:
    env = dict(os.environ if env is None else env)
    settings = GatewaySettings.from_env(env)
    gateway = Gateway(env, store or store_from_env(env), emit or emitter_from_env(env, settings.sink_timeout))
    app = Starlette(routes=[
        Route("/", gateway.index, methods=["GET"]),
        Route("/", _no_events, methods=["POST"]),
        Route("/healthz", _ok, methods=["GET"]),
        Route("/readyz", _ok, methods=["GET"]),
        Route("/upload/{identifier}", gateway.upload, methods=["POST", "PUT"]),
        Route("/pipelines/{identifier}", gateway.pipelines, methods=["GET"], name="pipelines"),
        Route("/plot/{identifier}.png", gateway.plot, methods=["GET"]),
        Route("/download/{kind}/{rest:path}", gateway.download, methods=["GET"]),
    ])
    app.state.gateway = gateway
    return app
