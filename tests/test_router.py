"""The embedded router on a tiny routing table of test handlers (this module's functions)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cloudevents.http import CloudEvent

from flts import events, routing
from flts.embedded import EmbeddedRouter
from flts.routing import Deployment

HASH = "0123456789abcdef"
CALLS: list[tuple[str, str, str | None, str | None]] = []  # (WHO, event type, SHARED, MODEL_TYPE)

# Handler specs point at this module under whatever name pytest imported it as.
ME = __name__


def spec(name: str) -> str:
    return f"{ME}:{name}"


def deployment(name: str, takes: tuple[str, ...], env: dict, handler: str) -> Deployment:
    """A deployment of a test function: preprocess's spec with this module's handler."""
    return Deployment(name, replace(routing.function_spec("preprocess"), name=name, takes=takes, handler=handler),
                      env)


def ready_event(identifier: str = "site") -> CloudEvent:
    return events.make_event(events.DATASET_READY, "test",
                             {"bucket": "raw-data", "object_key": f"{identifier}.csv", "identifier": identifier})


def record(event, env) -> list:
    CALLS.append((env["WHO"], event["type"], env.get("SHARED"), env.get("MODEL_TYPE")))
    return []


def to_training_data(event, env) -> list:
    record(event, env)
    data = events.parse_data(event, (events.DATASET_READY,))
    claim = {"bucket": "processed-data", "object_key": "p/train.parquet", "config_hash": HASH,
             "identifier": data.identifier}
    return [events.make_event(events.TRAINING_DATA, "preprocess", claim)]


def boom(event, env) -> list:
    raise RuntimeError("disk on fire")


def reject(event, env) -> list:
    events.parse_data(event, (events.MODEL_SELECTED,))
    return []


def emit_unknown(event, env) -> list:
    return [CloudEvent({"type": "flts.bogus", "source": "/x"}, {"identifier": "x"})]


def loop(event, env) -> list:
    return [ready_event()]


@pytest.fixture(autouse=True)
def clear_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def test_delivers_to_every_subscriber_with_its_own_env():
    table = [
        deployment("pre", (events.DATASET_READY,), {"WHO": "pre"}, spec("to_training_data")),
        deployment("train-a", (events.TRAINING_DATA,), {"WHO": "a", "MODEL_TYPE": "A"}, spec("record")),
        deployment("train-b", (events.TRAINING_DATA,), {"WHO": "b", "MODEL_TYPE": "B"}, spec("record")),
        deployment("other", (events.MODEL_TRAINING,), {"WHO": "other"}, spec("record")),
    ]
    env = {"SHARED": "yes", "MODEL_TYPE": "from-process"}
    router = EmbeddedRouter(env, table)
    router.publish(ready_event())
    deliveries = router.run()

    assert [(d.deployment, d.event_type, d.emitted, d.error) for d in deliveries] == [
        ("pre", events.DATASET_READY, [events.TRAINING_DATA], None),
        ("train-a", events.TRAINING_DATA, [], None),
        ("train-b", events.TRAINING_DATA, [], None),
    ]
    assert CALLS == [  # the deployment's env wins over the process env; the rest passes through
        ("pre", events.DATASET_READY, "yes", "from-process"),
        ("a", events.TRAINING_DATA, "yes", "A"),
        ("b", events.TRAINING_DATA, "yes", "B"),
    ]
    assert env == {"SHARED": "yes", "MODEL_TYPE": "from-process"}  # the router does not mutate its env
    assert [e["type"] for e in router.published] == [events.DATASET_READY, events.TRAINING_DATA]
    assert router.dead_letters() == []
    assert all(d.seconds >= 0 for d in deliveries)


def test_run_returns_only_the_new_deliveries():
    router = EmbeddedRouter({}, [deployment("r", (events.DATASET_READY,), {"WHO": "r"}, spec("record"))])
    router.publish(ready_event("one"))
    assert len(router.run()) == 1
    assert router.run() == []
    router.publish(ready_event("two"))
    assert len(router.run()) == 1 and len(router.deliveries) == 2


def test_a_failing_handler_is_a_dead_letter_and_the_rest_flows(capfd):
    table = [
        deployment("broken", (events.DATASET_READY,), {"WHO": "broken"}, spec("boom")),
        deployment("pre", (events.DATASET_READY,), {"WHO": "pre"}, spec("to_training_data")),
        deployment("train", (events.TRAINING_DATA,), {"WHO": "t"}, spec("record")),
    ]
    router = EmbeddedRouter({}, table)
    router.publish(ready_event("one"))
    router.publish(ready_event("two"))
    router.run()
    dead = router.dead_letters()
    assert [(d.deployment, d.error) for d in dead] == [("broken", "RuntimeError: disk on fire")] * 2
    assert [who for who, *_ in CALLS] == ["pre", "pre", "t", "t"]
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    letters = [line for line in lines if line["event"] == "dead_letter"]
    assert len(letters) == 2 and letters[0]["deployment"] == "broken" and letters[0]["level"] == "error"
    assert letters[0]["error"] == "RuntimeError: disk on fire"


def test_a_bad_event_is_rejected_not_retried():
    router = EmbeddedRouter({}, [deployment("picky", (events.DATASET_READY,), {}, spec("reject"))])
    router.publish(ready_event())
    [delivery] = router.run()
    assert delivery.error.startswith("rejected: event type 'flts.dataset.ready' is not handled here")


def test_a_deployment_whose_code_is_missing_dead_letters_and_others_flow():
    table = [
        deployment("ghost", (events.DATASET_READY,), {}, "flts_no_such_module:handle"),
        deployment("real", (events.DATASET_READY,), {"WHO": "real"}, spec("record")),
    ]
    router = EmbeddedRouter({}, table)
    router.publish(ready_event())
    router.run()
    [dead] = router.dead_letters()
    assert dead.deployment == "ghost" and "flts_no_such_module" in dead.error
    assert [who for who, *_ in CALLS] == ["real"]


def test_publishing_an_unknown_type_is_refused():
    router = EmbeddedRouter({}, [])
    with pytest.raises(events.EventError, match="no topic for event type 'flts.bogus'"):
        router.publish(CloudEvent({"type": "flts.bogus", "source": "/x"}, {"identifier": "x"}))
    assert router.published == [] and router.run() == []


def test_a_handler_emitting_an_unknown_type_is_a_dead_letter():
    router = EmbeddedRouter({}, [deployment("odd", (events.DATASET_READY,), {}, spec("emit_unknown"))])
    router.publish(ready_event())
    [delivery] = router.run()
    assert "no topic for event type 'flts.bogus'" in delivery.error and delivery.emitted == []
    assert [e["type"] for e in router.published] == [events.DATASET_READY]


def test_a_routing_loop_is_stopped():
    router = EmbeddedRouter({}, [deployment("loop", (events.DATASET_READY,), {}, spec("loop"))])
    router.publish(ready_event())
    with pytest.raises(RuntimeError, match="more than 5 events: a routing loop"):
        router.run(max_events=5)


def test_on_delivery_sees_each_delivery():
    seen = []
    router = EmbeddedRouter({}, [deployment("r", (events.DATASET_READY,), {"WHO": "r"}, spec("record"))],
                            on_delivery=seen.append)
    router.publish(ready_event())
    assert router.run() == seen


def test_the_real_routing_table():
    """One trainer per family, each with its MODEL_TYPE, gets training data; each type has one topic."""
    trainers = routing.subscribers(events.TRAINING_DATA)
    assert [(d.name, d.env["MODEL_TYPE"]) for d in trainers] == [
        ("train-gru", "GRU"), ("train-lstm", "LSTM"), ("train-prophet", "PROPHET"), ("train-lgbm", "LGBM"),
        ("train-mstl", "MSTL")]
    assert [d.name for d in routing.subscribers(events.DATASET_READY)] == ["preprocess"]
    assert [d.name for d in routing.subscribers(events.MODEL_TRAINING)] == ["eval"]
    assert {d.name for d in routing.subscribers(events.MODEL_SELECTED)} == {"infer"}
    assert routing.topic_of(events.TRAINING_DATA) == "training-data"
    assert routing.dlq_topic("training-data") == "dlq-training-data"
    assert len(set(routing.TOPICS.values())) == len(routing.TOPICS)
