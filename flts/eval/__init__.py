"""The eval function: once every expected model type finished for a config hash, score them
on the held-out windows and promote the winner.

    handler.py    `handle`: model-training → model-selected (waits for the other types)
    scoring.py    a run's serving artifact scored on the test windows; baselines
    settings.py   its knobs
"""
from flts import events
from flts.spec import Capacity, event_function

SPEC = event_function(
    "eval",
    takes=(events.MODEL_TRAINING,),
    emits=(events.MODEL_SELECTED,),
    settings="EvalSettings",
    entry="eval_function",
    capacity=Capacity(concurrency=1, max_scale=2, timeout_seconds=300,
                      requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1", "memory": "2Gi"}),
)
