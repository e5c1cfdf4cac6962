"""A new FLTS function, as `faas-cli new <name> --lang flts-python` starts it: one CloudEvent
handler behind functions-framework, like functions/preprocess/main.py.

Every FLTS function is its spec (docs/architecture.md, "A function is its spec"). To deploy
this one:
  1. flts/<name>/__init__.py: SPEC = event_function("<name>", ...) (flts/spec.py), with its
     handler in flts/<name>/handler.py and its settings model in flts/<name>/settings.py;
  2. add the SPEC to flts/routing.py's SPECS and move this folder to functions/<name>/;
  3. `flts deploy render`: stack.yml (build_args FLTS_FUNCTION=<name>), the Knative Service and
     Triggers, this folder's pinned requirements.txt and its Dockerfile follow.
"""
import os

import functions_framework

from flts.function_http import serve_events
from flts.logs import configure


def handle(event, env):
    """One CloudEvent in; the events it emits out (a list, or a generator)."""
    return []


configure(os.environ, component="function")


@functions_framework.http
def serve(request):
    return serve_events(request, handle)
