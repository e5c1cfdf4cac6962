"""The functions' specs: one per function package, and everything derived from them."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from flts import embedded, events, forecasters, routing
from flts.spec import Capacity, FunctionSpec, Scaling, Server

FUNCTIONS = ("preprocess", "train", "eval", "infer", "gateway")


def test_one_spec_per_function_package_named_like_its_folder(repo):
    assert [spec.name for spec in routing.SPECS] == list(FUNCTIONS)
    for spec in routing.SPECS:
        assert (repo / "functions" / spec.name / "main.py").is_file()
        assert spec.handler.startswith(f"flts.{spec.name}.") and spec.settings.startswith(f"flts.{spec.name}.")


def test_every_handler_and_settings_model_loads():
    for spec in routing.SPECS:
        assert callable(spec.load_handler())
        assert hasattr(spec.settings_model(), "from_env")


def test_deployments_are_the_specs_variants_and_trainers_follow_the_forecaster_registry():
    assert [d.name for d in routing.DEPLOYMENTS] == ["preprocess", *(f"train-{m.lower()}" for m in forecasters.names()),
                                                    "eval", "infer", "gateway"]
    trainers = [d for d in routing.DEPLOYMENTS if d.function == "train"]
    assert [d.env["MODEL_TYPE"] for d in trainers] == list(forecasters.names())
    assert all(d.subscribes == d.spec.takes for d in routing.DEPLOYMENTS)


def test_what_functions_take_and_emit_is_routable_and_someone_takes_every_emitted_type():
    taken = {t for spec in routing.SPECS for t in spec.takes}
    for spec in routing.SPECS:
        assert set(spec.takes) | set(spec.emits) <= set(routing.TOPICS)
    emitted = {t for spec in routing.SPECS for t in spec.emits}
    assert emitted <= taken, f"nobody takes {sorted(emitted - taken)}"
    # uploads come from outside: the gateway (it takes nothing) or a CloudEvent written to Kafka
    starters = {t for spec in routing.SPECS if not spec.takes for t in spec.emits}
    assert starters == {events.DATASET_READY} and events.DATASET_READY not in {
        t for spec in routing.SPECS if spec.takes for t in spec.emits}


def test_scaling_class_matches_the_server_and_capacity():
    for spec in routing.SPECS:
        if spec.scaling is Scaling.EVENT_WORKER:  # one event at a time: a trainer's run owns its instance
            assert spec.server is Server.FUNCTIONS_FRAMEWORK and spec.capacity.concurrency == 1
        else:  # infer: many requests at once, its own admission limit is the platform's
            assert spec.capacity.concurrency == int(spec.env["MAX_INFLIGHT"]) > 1 and spec.public


@pytest.mark.parametrize("server, expected", [
    (Server.FUNCTIONS_FRAMEWORK, ["-m", "functions_framework", "--source", "src/main.py", "--target", "go",
                                  "--host", "0.0.0.0", "--port", "9000"]),
    (Server.UVICORN, ["-m", "uvicorn", "main:go", "--app-dir", "src", "--host", "0.0.0.0", "--port", "9000",
                      "--no-access-log"]),
])
def test_server_command_serves_the_entry_of_main_py(server, expected):
    spec = replace(routing.function_spec("preprocess"), server=server, entry="go")
    assert spec.server_command("0.0.0.0", 9000, source_dir="src") == [sys.executable, *expected]


def test_unknown_function_is_named():
    with pytest.raises(KeyError, match=r"no function named 'nope' \(known: \['preprocess', 'train'"):
        routing.function_spec("nope")


def test_the_embedded_router_runs_a_new_function_from_its_spec_alone():
    """Adding a function is a spec: the router finds its handler through it."""
    spec = FunctionSpec(name="echo", handler=f"{__name__}:echo", takes=(events.DATASET_READY,), emits=(),
                        settings="flts.preprocess.settings:PreprocessSettings", server=Server.FUNCTIONS_FRAMEWORK,
                        entry="echo", scaling=Scaling.EVENT_WORKER,
                        capacity=Capacity(concurrency=1, max_scale=1, timeout_seconds=1, requests={}, limits={}))
    router = embedded.EmbeddedRouter({}, [routing.Deployment("echo", spec)])
    router.publish(events.make_event(events.DATASET_READY, "test",
                                     {"bucket": "raw-data", "object_key": "a.csv", "identifier": "a"}))
    [delivery] = router.run()
    assert delivery.deployment == "echo" and delivery.error is None and ECHOED == ["a"]


ECHOED: list[str] = []


def echo(event, env) -> list:
    ECHOED.append(event.data["identifier"])
    return []


def test_reading_the_specs_and_the_cli_loads_no_heavy_library():
    code = ("import sys, flts.cli, flts.routing; flts.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'onnxruntime', 'mlflow', 'pandas', 'prophet', 'pyarrow', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
