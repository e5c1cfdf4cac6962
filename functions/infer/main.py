"""Infer function: ONNX serving (POST /predict, /v2/..., /metrics ...) and its CloudEvents.

Plain Starlette on uvicorn (httptools + uvloop) rather than functions-framework: the
/predict path is the hot one and needs nothing from the framework; CloudEvents
(`flts.model-selected`, `flts.inference-data`) arrive as POST / on the same app.

Run locally:
    uvicorn functions.infer.main:app --http httptools --loop uvloop --port 8080 --no-access-log
    python -m flts.infer serve --port 8080 --workers 2        # same app, tuned flags
Configuration: environment variables, see docs/inference.md.
"""
import os

from flts.infer.app import create_app
from flts.logs import configure

configure(os.environ, component="infer")

app = create_app()
