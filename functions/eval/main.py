"""Eval function: `flts.model-training` in, `flts.model-selected` out (once all model types finished).

Run locally:  functions-framework --source functions/eval/main.py --target eval_function --port 8083
"""
import os

import functions_framework

from flts.eval.handler import handle
from flts.function_http import serve_events
from flts.logs import configure

configure(os.environ, component="eval")


@functions_framework.http
def eval_function(request):
    return serve_events(request, handle)
