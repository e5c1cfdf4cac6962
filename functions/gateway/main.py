"""Gateway function: upload, download and pipeline status over HTTP, and the status page.

Plain Starlette on uvicorn, like infer. Its outputs (`flts.dataset.ready`) go to K_SINK (the
dispatcher's ingress on the local stack, the Broker's KafkaSink on Knative); with no K_SINK the
whole pipeline runs embedded in this process.

Run locally:
    uvicorn main:app --app-dir functions/gateway --port 8080 --no-access-log
Configuration: environment variables, see docs/contracts.md ("The gateway").
"""
import os

from flts.gateway.app import create_app
from flts.logs import configure

configure(os.environ, component="gateway")

app = create_app()
