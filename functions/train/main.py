"""Train function: `flts.training-data` in, `flts.model-training` RUNNING + SUCCESS|FAILED out.

One deployment per model type (MODEL_TYPE=GRU, LSTM or PROPHET), same code.
Run locally:  MODEL_TYPE=GRU functions-framework --source functions/train/main.py --target train --port 8082
"""
import os

import functions_framework

from flts.function_http import serve_events
from flts.logs import configure
from flts.train.handler import handle

configure(os.environ, component="train")


@functions_framework.http
def train(request):
    return serve_events(request, handle)
