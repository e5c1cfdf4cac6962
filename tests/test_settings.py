"""Settings models: read from a given mapping, errors that name the variable, generated docs."""
from __future__ import annotations

from pathlib import Path

import pytest

from flts.dev.settings_docs import MODELS, render
from flts.eval.settings import EvalSettings
from flts.infer.settings import ServingSettings
from flts.preprocess.settings import PreprocessSettings
from flts.settings import CommaList, ConfigError, Flag, Settings, Variable, knob, variables
from flts.spec import load
from flts.storage import StorageSettings
from flts.train.settings import TrainSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"
GRU = {"MODEL_TYPE": "GRU"}


class Example(Settings):
    count: int = knob("COUNT", 3, "how many", ge=1)
    ratio: float = knob("RATIO", 0.5, "a fraction", gt=0, lt=1)
    on: Flag = knob("ON", False, "a switch")
    names: CommaList = knob("NAMES", ("a", "b"), "some names")
    name: str = knob("NAME", "x", "a name")


@pytest.mark.parametrize("env, message", [
    ({"COUNT": "abc"}, "COUNT must be an integer >= 1, got 'abc'"),
    ({"COUNT": "0"}, "COUNT must be an integer >= 1, got '0'"),
    ({"RATIO": "1"}, "RATIO must be a number > 0 and < 1, got '1'"),
    ({"RATIO": "half"}, "RATIO must be a number > 0 and < 1, got 'half'"),
    ({"ON": "maybe"}, "ON must be a boolean (1/0, true/false, yes/no, on/off), got 'maybe'"),
    ({"ON": "y"}, "ON must be a boolean"),  # pydantic's wider set is not accepted
])
def test_a_bad_value_names_its_variable_and_the_value(env, message):
    with pytest.raises(ConfigError) as caught:
        Example.from_env(env)
    assert str(caught.value).startswith(message)


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ConfigError, match="COUNT must be .*; RATIO must be "):
        Example.from_env({"COUNT": "x", "RATIO": "y"})


def test_empty_means_the_default_and_other_variables_are_ignored():
    assert Example.from_env({"COUNT": "", "ON": "", "NAMES": "", "PATH": "/bin", "count": "9"}) == Example()


@pytest.mark.parametrize("word, value", [(w, True) for w in ("1", "true", "yes", "on", " TRUE ", "On")]
                         + [(w, False) for w in ("0", "false", "no", "off", "False ")])
def test_booleans(word, value):
    assert Example.from_env({"ON": word}).on is value


def test_comma_lists_and_bounds_at_their_edges():
    settings = Example.from_env({"NAMES": " c, d,,e ", "COUNT": "1", "RATIO": "0.999"})
    assert (settings.names, settings.count, settings.ratio) == (("c", "d", "e"), 1, 0.999)


def test_the_process_environment_is_not_read(monkeypatch):
    monkeypatch.setenv("COUNT", "7")
    assert Example.from_env({}).count == 3 and Example().count == 3


def test_code_builds_settings_by_field_name_with_the_same_checks():
    assert Example(count=5).count == 5
    with pytest.raises(ConfigError, match="COUNT must be an integer >= 1, got 0"):
        Example(count=0)
    with pytest.raises(ConfigError, match="cuont is not a setting of Example"):
        Example(cuont=5)


def test_a_field_without_variable_or_description_is_refused():
    with pytest.raises(TypeError, match=r"declare \['size'\] with knob"):
        class Sloppy(Settings):
            size: int = 3


def test_variables_spell_defaults_as_the_environment_does():
    assert variables(Example) == [Variable("COUNT", "3", "how many"), Variable("RATIO", "0.5", "a fraction"),
                                  Variable("ON", "0", "a switch"), Variable("NAMES", "a,b", "some names"),
                                  Variable("NAME", "x", "a name")]
    assert variables(load(MODELS["dispatcher"]))[0] == Variable("KAFKA_BOOTSTRAP_SERVERS", None,
                                                                "host:port of the Kafka broker")


def test_the_front_door_settings_name_their_variable():
    from flts.dev.frontdoor import FrontdoorSettings

    assert FrontdoorSettings.from_env({"FRONTDOOR_MAX_PENDING": "4"}).max_pending == 4
    with pytest.raises(ConfigError, match="FRONTDOOR_MAX_PENDING must be an integer >= 1, got '0'"):
        FrontdoorSettings.from_env({"FRONTDOOR_MAX_PENDING": "0"})


# ---------------------------------------------------------------- the functions' models

@pytest.mark.parametrize("model", [load(path) for path in MODELS.values()], ids=list(MODELS))
def test_every_model_reads_its_defaults_from_an_empty_environment(model):
    required = {v.name: "k:9092" for v in variables(model) if v.default is None}
    env = {**required, **(GRU if model is TrainSettings else {})}
    assert model.from_env(env) == model.from_env({**env, **{v.name: "" for v in variables(model) if v.default}})


def test_shared_knobs_have_one_default_everywhere():
    defaults = {}
    for path in MODELS.values():
        for v in variables(load(path)):
            defaults.setdefault(v.name, set()).add(v.default)
    # BATCH_SIZE names two knobs of two deployments (train's optimiser, infer's micro-batch), never shared.
    # KAFKA_BOOTSTRAP_SERVERS: the dispatcher cannot run without it; the gateway shows no dead letters without it.
    assert {name: found for name, found in defaults.items() if len(found) > 1} == {
        "BATCH_SIZE": {"256", "32"}, "KAFKA_BOOTSTRAP_SERVERS": {"", None}}
    assert defaults["PROCESSED_BUCKET"] == {"processed-data"} and defaults["PROMOTION_BUCKET"] == {"model-promotion"}


def test_cross_field_checks_name_both_variables():
    with pytest.raises(ConfigError, match=r"INFER_WORKERS \(5\) must be <= MAX_WORKERS \(4\)"):
        ServingSettings.from_env({"INFER_WORKERS": "5"})
    with pytest.raises(ConfigError, match="DROP_COLUMNS must not name the timestamp or target column"):
        PreprocessSettings.from_env({"TARGET_COLUMN": "load", "DROP_COLUMNS": "site,load"})


@pytest.mark.parametrize("model, env, message", [
    (TrainSettings, {**GRU, "EPOCHS": "abc"}, "EPOCHS must be an integer >= 1, got 'abc'"),
    (TrainSettings, {**GRU, "LOSS": "l1"}, "LOSS must be one of ['mse', 'huber'], got 'l1'"),
    (TrainSettings, {**GRU, "VAL_FRACTION": "1"}, "VAL_FRACTION must be a number > 0 and < 1, got '1'"),
    (EvalSettings, {"REGISTER_CHAMPION": "sure"}, "REGISTER_CHAMPION must be a boolean"),
    (ServingSettings, {"MAX_BODY_BYTES": "100"}, "MAX_BODY_BYTES must be an integer >= 256, got '100'"),
    (StorageSettings, {"S3_SECURE": "tls"}, "S3_SECURE must be a boolean"),
    (PreprocessSettings, {"TEST_FRACTION": "1.5"}, "TEST_FRACTION must be a number > 0 and < 1, got '1.5'"),
])
def test_the_functions_settings_name_the_bad_variable(model, env, message):
    with pytest.raises(ConfigError) as caught:
        model.from_env(env)
    assert str(caught.value).startswith(message)


def test_case_and_normalisation_of_the_functions_settings():
    assert TrainSettings.from_env({"MODEL_TYPE": " lstm ", "LOSS": "Huber"}).loss == "huber"
    assert EvalSettings.from_env({"EXPECTED_MODEL_TYPES": "gru, prophet"}).expected_types == ("GRU", "PROPHET")
    assert StorageSettings.from_env({"S3_SECRET_KEY": "hush"}).secret_key not in repr(StorageSettings(secret_key="hush"))


# ---------------------------------------------------------------- generated docs

def test_committed_settings_tables_match_the_models():
    """Fails when a knob changed without `flts settings-docs` being run (the docs drifted)."""
    stale = [path.name for path in sorted(DOCS.glob("*.md")) if render(path.read_text()) != path.read_text()]
    assert not stale, f"settings tables are stale in {stale}: run `.venv/bin/flts settings-docs`"


def test_every_model_has_a_table_in_the_docs():
    text = "\n".join(path.read_text() for path in DOCS.glob("*.md"))
    assert [name for name in MODELS if f"<!-- settings:{name} -->" not in text] == []


def test_render_rewrites_only_between_the_markers():
    text = "before\n<!-- settings:storage -->\nold table\n<!-- /settings:storage -->\nafter\n"
    out = render(text)
    assert out.startswith("before\n<!-- settings:storage -->\n| variable | default | meaning |\n")
    assert "old table" not in out and out.endswith("<!-- /settings:storage -->\nafter\n")
    assert "| `S3_SECURE` | `0` | TLS to the S3 server |" in out
    with pytest.raises(KeyError, match="settings:nope"):
        render("<!-- settings:nope -->\n<!-- /settings:nope -->")


def test_the_command_rewrites_stale_tables_and_names_the_files(tmp_path, capsys):
    from flts import cli

    stale = tmp_path / "stale.md"
    stale.write_text("<!-- settings:storage -->\nold\n<!-- /settings:storage -->\n")
    (tmp_path / "plain.md").write_text("no tables\n")
    assert cli.main(["settings-docs", "--docs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(stale)]
    assert render(stale.read_text()) == stale.read_text() and "`S3_ENDPOINT`" in stale.read_text()
