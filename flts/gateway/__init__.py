"""The gateway: the HTTP way into the pipeline, beside writing CloudEvents to Kafka.

- app:      the Starlette app: POST /upload/{identifier}, GET /pipelines/{identifier},
            GET /download/..., GET /plot/{identifier}.png and the status page GET /
- uploads:  streaming an upload into the raw-data bucket (size limit, CSV sniffing, content hash)
- status:   a pipeline's stages, read from what the pipeline already writes (objects, MLflow, dlq-*)
- emit:     where `flts.dataset.ready` goes: K_SINK (the dispatcher's ingress, a Broker), or the
            embedded router when K_SINK is empty
- page:     the server-rendered status page
- handler:  the CloudEvent handler the spec needs (the gateway takes no events)
"""
from flts import events
from flts.gateway.settings import DEFAULT_MAX_INFLIGHT
from flts.spec import Capacity, FunctionSpec, Scaling, Server

SPEC = FunctionSpec(
    name="gateway",
    handler="flts.gateway.handler:handle",
    takes=(),
    emits=(events.DATASET_READY,),
    settings="flts.gateway.settings:GatewaySettings",
    server=Server.UVICORN,
    entry="app",
    scaling=Scaling.REQUEST_SERVER,
    capacity=Capacity(concurrency=DEFAULT_MAX_INFLIGHT, max_scale=3, timeout_seconds=300,
                      requests={"cpu": "100m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "512Mi"}),
    public=True,
    # GATEWAY_TOKEN guards upload and download (empty: EVENT_TOKEN's, which OpenFaaS CE mounts anyway).
    secrets=("S3_ACCESS_KEY", "S3_SECRET_KEY", "GATEWAY_TOKEN"),
    env={"MAX_INFLIGHT": str(DEFAULT_MAX_INFLIGHT)},
)
