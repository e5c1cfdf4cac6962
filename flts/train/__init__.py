"""The train function: one deployment per model family (MODEL_TYPE), same code.

    handler.py    `handle`: training-data → model-training RUNNING, then SUCCESS or FAILED
    data.py       the claimed Parquet in, checked
    tracking.py   MLflow runs, params, metrics, de-duplication by config hash
    artifacts.py  the run's artifact layout (shared with eval and infer)
    settings.py   its knobs
The families themselves (fit, export, load) live in flts.forecasters.
"""
from flts import events, forecasters
from flts.spec import Capacity, Variant, event_function

SPEC = event_function(
    "train",
    takes=(events.TRAINING_DATA,),
    emits=(events.MODEL_TRAINING,),
    settings="TrainSettings",
    entry="train",
    capacity=Capacity(concurrency=1, max_scale=2, timeout_seconds=600,
                      requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}),
    variants=tuple(Variant(f"train-{family.lower()}", {"MODEL_TYPE": family}) for family in forecasters.names()),
)
