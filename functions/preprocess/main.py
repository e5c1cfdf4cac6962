"""Preprocess function: `flts.dataset.ready` in, `flts.training-data` out.

Run locally:  functions-framework --source functions/preprocess/main.py --target preprocess --port 8081
"""
import os

import functions_framework

from flts.function_http import serve_events
from flts.logs import configure
from flts.preprocess.handler import handle

configure(os.environ, component="preprocess")


@functions_framework.http
def preprocess(request):
    return serve_events(request, handle)
