"""The preprocess function: a raw CSV in, feature Parquet keyed by its config hash out.

    handler.py    `handle`: dataset-ready → training-data (and inference-data), idempotent
    timeaxis.py   timestamps: formats, date order, time zones → UTC, the regular grid, seasonal periods
    settings.py   its knobs (what changes the output goes into the config hash)
    errors.py     DataError: the dataset is unusable (→ 400)
"""
from flts import events
from flts.spec import Capacity, event_function

SPEC = event_function(
    "preprocess",
    takes=(events.DATASET_READY,),
    emits=(events.TRAINING_DATA, events.INFERENCE_DATA),
    settings="PreprocessSettings",
    entry="preprocess",
    capacity=Capacity(concurrency=1, max_scale=4, timeout_seconds=300,
                      requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1", "memory": "2Gi"}),
)
