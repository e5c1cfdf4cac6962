"""Replicas on the local stack, without services: parsing the count, the plan it makes, the
dispatcher's consumers per replica, the warning when partitions are too few, the lag, the table."""
from __future__ import annotations

import pytest

from flts import routing
from flts.dev import infra as fi
from flts.dev import scaling, stack
from flts.dispatcher import Dispatcher, DispatchSettings, parse_targets, replica_targets, routes_from_table
from flts.settings import ConfigError


@pytest.fixture
def offline_cfg(tmp_path):
    base = stack.free_port_block(2 * len(routing.DEPLOYMENTS) + 1)
    return stack.StackConfig(infra=fi.InfraConfig(state_dir=tmp_path / "state"), function_base_port=base + 1,
                             dispatcher_port=base)


# --------------------------------------------------------------------------- the count
def test_replicas_name_deployments_or_a_whole_function():
    assert scaling.parse_replicas("") == {}
    assert scaling.parse_replicas(" train-gru=2 , eval=3") == {"train-gru": 2, "eval": 3}
    trainers = [d.name for d in routing.DEPLOYMENTS if d.function == "train"]
    assert scaling.parse_replicas("train=2,train-gru=4") == {**dict.fromkeys(trainers, 2), "train-gru": 4}


@pytest.mark.parametrize("raw, message", [
    ("eval=0", "'eval=0' must look like deployment=n with n from 1 to 8"),
    ("eval=9", "n from 1 to 8"),
    ("eval", "'eval' must look like deployment=n"),
    ("nope=2", "no deployment or function 'nope'"),
    ("infer=2", r"\['infer'\] cannot have replicas: only event workers"),
    ("gateway=2", r"\['gateway'\] cannot have replicas"),
])
def test_a_bad_replica_count_is_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        scaling.parse_replicas(raw)


def test_the_knobs_are_read_from_the_environment():
    settings = scaling.ScaleSettings.from_env({"FLTS_REPLICAS": "eval=2", "FLTS_TOPIC_PARTITIONS": "8"})
    assert (settings.replicas, settings.partitions) == ("eval=2", 8)
    assert scaling.ScaleSettings.from_env({}).partitions == 4
    with pytest.raises(ConfigError, match="FLTS_TOPIC_PARTITIONS must be an integer >= 1"):
        scaling.ScaleSettings.from_env({"FLTS_TOPIC_PARTITIONS": "0"})


# --------------------------------------------------------------------------- the plan
def test_each_replica_is_its_own_process_on_its_own_port(offline_cfg):
    procs = stack.plan(offline_cfg, ["preprocess", "eval"], {"preprocess": 3})
    assert [(p.name, p.deployment, p.replica) for p in procs] == [
        ("fn-preprocess", "preprocess", 0), ("fn-preprocess-2", "preprocess", 1), ("fn-preprocess-3", "preprocess", 2),
        ("fn-eval", "eval", 0), ("dispatcher", "", 0)]
    n, base = len(routing.DEPLOYMENTS), offline_cfg.function_base_port
    assert [p.port for p in procs[:3]] == [base, base + n, base + 2 * n]  # never another deployment's port
    assert len({p.port for p in procs}) == len(procs)
    for proc in procs[:3]:
        assert proc.command[-1] == str(proc.port) and proc.url == f"http://127.0.0.1:{proc.port}/"
        assert proc.env["K_SINK"].endswith("/from/preprocess")  # the deployment's outputs, whichever replica
    env = procs[-1].env
    assert env["DISPATCH_TARGETS"] == ",".join([*(f"preprocess={p.url}" for p in procs[:3]), f"eval={procs[3].url}"])
    assert env["DISPATCH_LIMITS"] == "preprocess=1,eval=1"  # per replica: what one instance takes


def test_the_plan_reads_flts_replicas(offline_cfg, monkeypatch):
    monkeypatch.setenv("FLTS_REPLICAS", "eval=2")
    assert [p.name for p in stack.plan(offline_cfg, ["eval"])] == ["fn-eval", "fn-eval-2", "dispatcher"]
    monkeypatch.setenv("FLTS_REPLICAS", "infer=2")
    with pytest.raises(ConfigError, match="cannot have replicas"):
        stack.plan(offline_cfg)


# --------------------------------------------------------------------------- the dispatcher side
def test_a_deployment_listed_twice_gets_a_consumer_per_url_in_one_group():
    targets = replica_targets("preprocess=http://a:1/,eval=http://b:1/,preprocess=http://a:2/")
    assert targets == {"preprocess": ("http://a:1/", "http://a:2/"), "eval": ("http://b:1/",)}
    subs = routes_from_table(targets).subscriptions
    assert [(s.name, s.deployment, s.url, s.replica) for s in subs] == [
        ("preprocess", "preprocess", "http://a:1/", 0), ("preprocess-2", "preprocess", "http://a:2/", 1),
        ("eval", "eval", "http://b:1/", 0)]
    assert subs[0].topics == subs[1].topics == ("dataset-ready",)
    dispatcher = Dispatcher(DispatchSettings("k:9092"), routes_from_table(targets))
    from flts.dispatcher.consumer import ConsumerLoop

    loops = [ConsumerLoop(s, dispatcher.routes, dispatcher.settings, None, dispatcher._stop) for s in subs]
    assert [loop.group for loop in loops] == ["flts-preprocess", "flts-preprocess", "flts-eval"]
    with pytest.raises(ConfigError, match=r"names \['preprocess'\] more than once"):
        parse_targets("preprocess=http://a:1/,preprocess=http://a:2/")


def test_an_output_finds_its_delivery_on_whichever_replica_has_it():
    targets = replica_targets("preprocess=http://a:1/,preprocess=http://a:2/")
    dispatcher = Dispatcher(DispatchSettings("k:9092"), routes_from_table(targets))
    from flts.dispatcher.consumer import ConsumerLoop

    dispatcher.loops = [ConsumerLoop(s, dispatcher.routes, dispatcher.settings, None, dispatcher._stop)
                        for s in dispatcher.routes.subscriptions]
    dispatcher.loops[0]._roots[b"ds-a"] = "root-a"
    dispatcher.loops[1]._roots[b"ds-b"] = "root-b"
    outputs = [{"id": "1", "subject": "ds-b"}, {"id": "2", "subject": "ds-a"}]
    assert dispatcher._roots_in_flight("preprocess", outputs) == ["root-b", "root-a"]


def test_ready_means_every_consumer_joined_even_with_no_partition():
    dispatcher = Dispatcher(DispatchSettings("k:9092"),
                            routes_from_table(replica_targets("eval=http://a:1/,eval=http://a:2/")))

    class Loop:
        def __init__(self, joined, assigned):
            self.stats = type("Stats", (), {"joined": joined, "assigned": assigned})()

        def is_alive(self):
            return True

    dispatcher.loops = [Loop(True, ["model-training/0"]), Loop(True, [])]  # more replicas than partitions
    assert dispatcher.ready()
    dispatcher.loops.append(Loop(False, []))  # still joining
    assert not dispatcher.ready()


# --------------------------------------------------------------------------- warning and lag
def test_more_replicas_than_partitions_is_a_warning_naming_both_numbers():
    assert scaling.replica_warnings({"train-gru": 4}, {"training-data": 4}) == []
    [warning] = scaling.replica_warnings({"train-gru": 3, "preprocess": 2}, {"training-data": 2, "dataset-ready": 4})
    assert warning.startswith("train-gru: 3 replicas, but its topic(s) training-data have 2 partition(s): "
                              "1 replica(s) will get no events")
    assert "FLTS_TOPIC_PARTITIONS=3" in warning
    # infer reads two topics: the group can use as many members as the one with the most partitions
    assert scaling.replica_warnings({"infer": 3}, {"model-selected": 1, "inference-data": 3}) == []
    assert scaling.replica_warnings({"eval": 2}, {}) == [
        "eval: 2 replicas, but its topic(s) model-training have 0 partition(s): 2 replica(s) will get no events "
        "(FLTS_TOPIC_PARTITIONS=2 or more, then `flts up`)"]


def test_lag_is_what_the_group_has_not_committed():
    ends = {("t", 0): 10, ("t", 1): 5, ("t", 2): 7}
    begins = {("t", 0): 0, ("t", 1): 2, ("t", 2): 7}
    assert scaling.consumer_lag(ends, {("t", 0): 10, ("t", 1): 5, ("t", 2): 7}, begins) == 0
    assert scaling.consumer_lag(ends, {("t", 0): 4, ("t", 1): 5}, begins) == 6  # partition 2 is empty anyway
    # never committed: from its beginning (retention may have dropped the first records) when the group starts there
    assert scaling.consumer_lag(ends, {}, begins) == 10 + 3
    assert scaling.consumer_lag(ends, {}, begins, from_start=False) == 0  # latest: it starts at the end
    assert scaling.consumer_lag(ends, {("t", 0): 12}, begins, from_start=False) == 0  # never negative
    assert scaling.consumer_lag({}, {}, {}) == 0


def test_status_shows_replicas_and_lag_on_the_deployments_first_row(offline_cfg):
    procs = stack.plan(offline_cfg, ["preprocess", "eval"], {"preprocess": 2})
    rows = [{"name": p.name, "kind": p.kind, "pid": None, "url": p.url, "state": state}
            for p, state in zip(procs, ["healthy", "RESTARTING", "healthy", "healthy"], strict=True)]
    heads = stack._count_replicas(procs, rows)
    assert heads == {"preprocess": rows[0], "eval": rows[2]}
    assert (rows[0]["replicas_up"], rows[0]["replicas"], rows[1]["replica"]) == (1, 2, 1)
    assert "replicas" not in rows[1] and "replicas" not in rows[3]
    rows[0]["lag"], rows[2]["lag"] = 12, 0
    table = stack.format_status(rows).splitlines()
    assert table[0].split()[:5] == ["NAME", "KIND", "STATE", "REPLICAS", "LAG"]
    assert table[1].split()[:5] == ["fn-preprocess", "function", "healthy", "1/2", "12"]
    assert table[2].split()[:4] == ["fn-preprocess-2", "function", "RESTARTING", "-"]  # its PID column
    assert table[3].split()[:5] == ["fn-eval", "function", "healthy", "1/1", "0"]


def test_a_bad_replicas_flag_is_a_one_line_error_before_anything_starts(offline_cfg, monkeypatch, capsys):
    from flts import cli

    monkeypatch.setenv("FLTS_STATE", str(offline_cfg.infra.state_dir))
    assert cli.main(["up", "--replicas", "infer=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: replicas: ['infer'] cannot have replicas") and err.count("\n") == 1
    assert not offline_cfg.infra.state_dir.exists()  # nothing was started, not even the state dir
