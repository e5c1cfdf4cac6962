"""flts.logs: JSON and text lines through the standard logging module, LOG_LEVEL, LOG_FORMAT,
other libraries' loggers, and the demo's choice of format."""
from __future__ import annotations

import logging
import re

import numpy as np
import orjson
import pytest

from flts import logs
from flts.cli import main
from flts.dev.demo import logging_env
from flts.settings import ConfigError


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    monkeypatch.delenv("MLFLOW_CONFIGURE_LOGGING", raising=False)  # configure sets it; undone after the test
    component = logs._component
    yield
    logs.configure({}, component=component)  # the defaults, as the rest of the suite gets them


def lines(err: str) -> list[str]:
    return err.splitlines()


def test_json_line_has_todays_keys_in_order(capsys):
    logs.configure({}, component="train-gru")
    logs.log("train_success_publish", model_type="GRU", epochs=np.int64(12), metrics={"nrmse": 0.49})
    [line] = lines(capsys.readouterr().err)
    record = orjson.loads(line)
    assert list(record) == ["ts", "level", "component", "event", "model_type", "epochs", "metrics"]
    assert record["level"] == "info" and record["component"] == "train-gru"
    assert record["event"] == "train_success_publish" and record["epochs"] == 12
    assert record["metrics"] == {"nrmse": 0.49} and isinstance(record["ts"], float)


def test_the_first_line_of_an_unconfigured_process_configures_the_defaults(monkeypatch, capsys):
    for variable in ("LOG_LEVEL", "LOG_FORMAT"):
        monkeypatch.delenv(variable, raising=False)
    logs.configure({"LOG_LEVEL": "ERROR"})
    monkeypatch.setattr(logs, "_configured", False)
    logs.log("preprocess_done", rows=3)  # written at INFO: configured again, from os.environ
    assert orjson.loads(capsys.readouterr().err)["rows"] == 3


def test_warn_and_error_name_their_level(capsys):
    logs.configure({})
    logs.warn("model_not_loaded", error="gone")
    logs.error("dead_letter", error="RuntimeError: disk on fire")
    assert [orjson.loads(line)["level"] for line in lines(capsys.readouterr().err)] == ["warning", "error"]


@pytest.mark.parametrize("level, written", [
    ("INFO", ["info", "warning"]), ("warning", ["warning"]), ("DEBUG", ["debug", "info", "warning"]),
])
def test_log_level_filters_flts_lines(capsys, level, written):
    logs.configure({"LOG_LEVEL": level})
    for name in ("debug", "info", "warning"):
        logs.log(name, level=name)
    assert [orjson.loads(line)["event"] for line in lines(capsys.readouterr().err)] == written


def test_a_disabled_level_builds_no_record(monkeypatch):
    logs.configure({"LOG_LEVEL": "INFO"})
    monkeypatch.setattr(logs._logger, "makeRecord", lambda *a, **k: pytest.fail("a record was built"))
    logs.log("predict_batch", level="debug", rows=1)


@pytest.mark.parametrize("env, variable", [({"LOG_LEVEL": "loud"}, "LOG_LEVEL"), ({"LOG_FORMAT": "xml"}, "LOG_FORMAT")])
def test_a_bad_value_is_refused_naming_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        logs.configure(env)


def test_the_cli_refuses_a_bad_log_level_without_a_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as exit_:
        main(["schemas", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "LOG_LEVEL must be one of" in capsys.readouterr().err


def test_text_format_is_a_short_line(capsys):
    logs.configure({"LOG_FORMAT": "text"}, component="train-gru")
    logs.log("train_success_publish", model_type="GRU", run_id="abc", metrics={"nrmse": 0.5})
    logs.error("dead_letter", error="RuntimeError: disk on fire")
    info, failure = lines(capsys.readouterr().err)
    assert re.fullmatch(r'\d\d:\d\d:\d\d train-gru +train_success_publish model_type=GRU run_id=abc '
                        r'metrics=\{"nrmse":0.5\}', info)
    assert failure.endswith(" ERROR dead_letter error=RuntimeError: disk on fire")


def test_other_libraries_go_through_the_same_handler_from_warning_up(capsys):
    prophet = logging.getLogger("prophet")
    prophet.setLevel(logging.INFO)  # as prophet does when imported, after configure
    mlflow = logging.getLogger("mlflow")
    mlflow.addHandler(logging.StreamHandler())  # as mlflow does when imported before configure
    mlflow.propagate = False
    logs.configure({})
    for library in (prophet, mlflow, logging.getLogger("urllib3.connectionpool")):
        library.info("chatter")
        library.warning("trouble in %s", library.name)
    records = [orjson.loads(line) for line in lines(capsys.readouterr().err)]
    assert [(r["level"], r["event"], r["message"]) for r in records] == [
        ("warning", "prophet", "trouble in prophet"), ("warning", "mlflow", "trouble in mlflow"),
        ("warning", "urllib3.connectionpool", "trouble in urllib3.connectionpool")]


def test_debug_lets_other_libraries_debug_through(capsys):
    logs.configure({"LOG_LEVEL": "debug", "LOG_FORMAT": "text"})
    logging.getLogger("urllib3").debug("connecting")
    assert lines(capsys.readouterr().err)[0].endswith(" DEBUG urllib3: connecting")


def test_demo_help_lists_json(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize("env, json_lines, expected", [
    ({}, False, {"LOG_FORMAT": "text", "LOG_LEVEL": "WARNING"}),
    ({}, True, {"LOG_FORMAT": "json"}),
    ({"LOG_FORMAT": "JSON"}, False, {"LOG_FORMAT": "json"}),
    ({"LOG_LEVEL": "INFO"}, False, {"LOG_FORMAT": "text", "LOG_LEVEL": "INFO"}),
    ({"LOG_FORMAT": "text"}, True, {"LOG_FORMAT": "json"}),
])
def test_demo_shows_text_from_warning_up_unless_asked_for_json(env, json_lines, expected):
    assert logging_env(env, json_lines) == expected
