"""The dispatcher against real Kafka and a real function process (functions-framework).

Each test gets its own topics (`t-<hex>-in`, `-out`, `dlq-t-<hex>-in`) and its own consumer
group, so the session's Kafka is shared without one test seeing another's events. The
function under test is a tiny functions-framework @http function written to a temp dir
and served in a subprocess; the event data steers it (fail with a status, be slow the
first time), and it records every delivery and, idempotently, every processed event id.
The dispatcher runs in the test process (started and stopped by each test).
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from flts import events, routing
from flts.dev import infra as fi
from flts.dev import processes
from flts.dev.testing import read_records
from flts.dispatcher import Dispatcher
from flts.dispatcher.producer import EventProducer
from flts.dispatcher.routes import Routes, Subscription
from flts.dispatcher.settings import DispatchSettings
from flts.spec import functions_framework_command

pytestmark = pytest.mark.stack
FUNCTION_THREADS = 4  # requests the test function serves at once (gunicorn gthread)

FUNCTION_SOURCE = '''
"""Test function: answers `test.ping` with `test.pong` {"in": <id>}; data steers it:
{"status": 503, "retry_after": 1} answers that status (unless the file "unless_file" exists); {"slow_first": s} sleeps the first time;
{"reply_type": t} answers with an event of type t."""
import json
import os
import time
from pathlib import Path

import functions_framework
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

STATE = Path(os.environ["FN_STATE"])


def append(name, line):
    with open(STATE / name, "a") as fh:
        fh.write(line + "\\n")


def first_time(event_id):
    """The idempotent side effect: an O_EXCL marker per event id."""
    (STATE / "done").mkdir(exist_ok=True)
    try:
        os.close(os.open(STATE / "done" / event_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


@functions_framework.http
def fn(request):
    if request.method == "GET":
        return "ok"
    event = from_http(dict(request.headers), request.get_data())
    data = event.data or {}
    append("deliveries.log", json.dumps({"id": event["id"], "t": time.time()}))
    if "status" in data and not os.path.exists(data.get("unless_file", "/nonexistent")):
        headers = {"Retry-After": str(data["retry_after"])} if "retry_after" in data else {}
        return json.dumps({"error": "asked to fail"}), data["status"], headers
    if first_time(event["id"]):
        append("processed.log", event["id"])
        time.sleep(data.get("slow_first", 0))
    attributes = {"type": data.get("reply_type", "test.pong"), "source": "/test/fn",
                  "subject": event.get("subject") or "t", "datacontenttype": "application/json"}
    reply = CloudEvent(attributes, {"in": event["id"]})
    headers, body = to_binary(reply)
    return body, 200, headers
'''


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FunctionProcess:
    """The test function in its own functions-framework process (own session, so it can be killed whole)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.source = workdir / "main.py"
        self.source.write_text(FUNCTION_SOURCE)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / "function.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> FunctionProcess:
        command = functions_framework_command(str(self.source), "fn", "127.0.0.1", self.port)
        self.proc = processes.spawn(command, env={"FN_STATE": str(self.state), "THREADS": str(FUNCTION_THREADS)},
                                    log_path=self.log)
        processes.wait_until(lambda: processes.http_ok(self.url), 60, proc=self.proc, what="the test function",
                             log_path=self.log, interval=0.1)
        return self

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            processes.stop_group(self.proc.pid, 20, sig)
            self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def lines(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def deliveries(self, event_id: str) -> list[float]:
        return [d["t"] for d in map(json.loads, self.lines("deliveries.log")) if d["id"] == event_id]


def ping(**data) -> CloudEvent:
    return CloudEvent({"type": "test.ping", "source": "/test", "subject": "t", "datacontenttype": "application/json"},
                      data)


class Bus:
    """A test's own topics, routes and Kafka clients."""

    def __init__(self, cfg: fi.InfraConfig, url: str):
        tag = uuid.uuid4().hex[:10]
        self.bootstrap = fi.kafka_bootstrap(cfg)
        self.inbox, self.outbox = f"t-{tag}-in", f"t-{tag}-out"
        self.dlq = routing.dlq_topic(self.inbox)
        self.deployment = f"fn-{tag}"
        self.group = f"flts-{self.deployment}"
        fi.create_topics(cfg, [self.inbox, self.outbox, self.dlq])
        self.routes = Routes({"test.ping": self.inbox, "test.pong": self.outbox},
                             (Subscription(self.deployment, url, ("test.ping",), (self.inbox,)),))
        self.producer = EventProducer(self.bootstrap, client_id="test-producer")
        self.dispatchers: list[Dispatcher] = []

    def dispatcher(self, **settings) -> Dispatcher:
        options = dict(max_retries=3, backoff_base=0.05, backoff_max=0.2, timeout=20.0, connect_timeout=1.0)
        options.update(settings)
        d = Dispatcher(DispatchSettings(self.bootstrap, ingress_port=0, **options), self.routes).start()
        self.dispatchers.append(d)
        return d

    def send(self, event) -> None:
        self.producer.send_event(self.inbox, event)

    def read(self, topic: str, count: int, timeout: float = 60.0) -> list:
        """The first `count` records of a topic (waits up to `timeout`)."""
        return read_records(self.bootstrap, topic, count, timeout)

    def replies(self, count: int, timeout: float = 60.0) -> list[dict]:
        return [orjson.loads(r.value) for r in self.read(self.outbox, count, timeout)]

    def dead_letters(self, count: int, timeout: float = 60.0) -> list[dict]:
        return [orjson.loads(r.value) for r in self.read(self.dlq, count, timeout)]

    def committed(self) -> int | None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        try:
            return consumer.committed(TopicPartition(self.inbox, 0))
        finally:
            consumer.close(autocommit=False)

    def close(self) -> None:
        for d in self.dispatchers:
            d.stop()
        self.producer.close()


@pytest.fixture
def function(tmp_path):
    fn = FunctionProcess(tmp_path / "fn").start()
    yield fn
    fn.stop()


@pytest.fixture
def bus(infra, function):
    b = Bus(infra, function.url)
    yield b
    b.close()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --------------------------------------------------------------------------- tests
def test_round_trip_through_kafka_function_and_back(bus, function):
    bus.dispatcher()
    event = ping()
    bus.send(event)
    [reply] = bus.replies(1)
    assert reply == {"in": event["id"]}
    record = bus.read(bus.outbox, 1)[0]
    assert dict(record.headers)["ce_type"] == b"test.pong"  # replies are written in binary mode too
    assert function.lines("processed.log") == [event["id"]]
    wait_for(lambda: bus.committed() == 1, what="offset commit")


def test_offset_committed_only_after_success_redelivered_after_kill(bus, function):
    first = bus.dispatcher(max_retries=10_000)  # keeps retrying while the function is down
    event = ping(slow_first=60)
    bus.send(event)
    # the side effect is done, the answer not yet sent: kill the function mid-delivery
    wait_for(lambda: function.lines("processed.log") == [event["id"]], what="first processing")
    function.kill()
    time.sleep(1.0)  # the dispatcher now sees connection errors and retries
    assert first.loops[0].is_alive()
    assert bus.committed() in (None, 0), "offset committed although no 2xx came back"
    first.stop()  # a dispatcher restart: the record must come again from Kafka
    assert bus.committed() in (None, 0)

    function.start()  # same port, same state
    bus.dispatcher()
    [reply] = bus.replies(1)
    assert reply == {"in": event["id"]}
    assert len(function.deliveries(event["id"])) >= 2, "the event was not delivered again"
    assert function.lines("processed.log") == [event["id"]], "the idempotent side effect ran twice"
    wait_for(lambda: bus.committed() == 1, what="offset commit after success")


def test_retry_then_dead_letter_on_repeated_503(bus, function):
    bus.dispatcher(max_retries=3)
    failing, after = ping(status=503), ping()
    bus.send(failing)
    bus.send(after)
    [letter] = bus.dead_letters(1)
    assert letter["event"]["id"] == failing["id"] and letter["event"]["data"] == {"status": 503}
    assert letter["attempts"] == 4 and letter["status"] == 503
    assert letter["function"] == bus.deployment and "503" in letter["error"] and letter["timestamp"]
    assert (letter["topic"], letter["offset"]) == (bus.inbox, 0)
    assert len(function.deliveries(failing["id"])) == 4  # the first try and 3 retries
    assert bus.replies(1) == [{"in": after["id"]}]  # the next event still flows
    wait_for(lambda: bus.committed() == 2, what="both offsets committed")


def test_retry_after_is_honoured(bus, function):
    bus.dispatcher(max_retries=1, backoff_base=0.01, backoff_max=0.01)
    event = ping(status=429, retry_after=2)
    bus.send(event)
    [letter] = bus.dead_letters(1)
    assert letter["status"] == 429 and letter["attempts"] == 2
    t1, t2 = function.deliveries(event["id"])
    assert t2 - t1 >= 1.9, f"retried after {t2 - t1:.2f}s although Retry-After said 2s"


def test_poison_event_goes_to_dlq_at_once_and_next_events_flow(bus, function):
    bus.dispatcher(max_retries=5)
    poison, good1, good2 = ping(status=400), ping(), ping()
    for event in (poison, good1, good2):
        bus.send(event)
    assert bus.replies(2) == [{"in": good1["id"]}, {"in": good2["id"]}]
    [letter] = bus.dead_letters(1)
    assert letter["event"]["id"] == poison["id"] and letter["attempts"] == 1 and letter["status"] == 400
    assert len(function.deliveries(poison["id"])) == 1  # not retried


def test_reply_that_cannot_be_routed_dead_letters_the_input(bus, function):
    bus.dispatcher()
    odd, good = ping(reply_type="test.nobody"), ping()
    bus.send(odd)
    bus.send(good)
    assert bus.replies(1) == [{"in": good["id"]}]
    [letter] = bus.dead_letters(1)
    assert letter["event"]["id"] == odd["id"] and letter["status"] == 200
    assert letter["error"].startswith("bad reply: no topic for event type 'test.nobody'")


def test_malformed_messages_go_to_dlq_and_never_block(bus, function):
    dispatcher = bus.dispatcher()
    bus.producer.send_raw(bus.inbox, b"definitely not an event", b"k")
    unknown = CloudEvent({"type": "test.unknown", "source": "/test", "datacontenttype": "application/json"}, {})
    bus.send(unknown)
    structured = ping()  # structured content mode is read too
    headers, body = to_structured(structured)
    bus.producer.send_raw(bus.inbox, body, None, [("content-type", headers["content-type"].encode())])
    assert bus.replies(1) == [{"in": structured["id"]}]
    # different keys go through different lanes: the dead letters' order is not the input's
    garbage, wrong_type = sorted(bus.dead_letters(2), key=lambda letter: letter["event"] is not None)
    assert garbage["event"] is None and garbage["raw"] == "definitely not an event"
    assert "not a CloudEvent" in garbage["error"] and garbage["attempts"] == 0
    assert wrong_type["event"]["id"] == unknown["id"] and "test.unknown" in wrong_type["error"]
    assert function.deliveries(unknown["id"]) == []
    assert dispatcher.loops[0].is_alive() and dispatcher.health()["consumers"][bus.deployment]["dead_lettered"] == 2


def test_ingress_writes_events_to_the_topic_of_their_type(infra, tmp_path):
    bus = Bus(infra, "http://127.0.0.1:9/")  # no consumer needed: only the ingress is under test
    bus.routes = Routes({**bus.routes.topics, events.DATASET_READY: bus.inbox}, ())
    dispatcher = bus.dispatcher()
    try:
        url = dispatcher.ingress_url
        pong = CloudEvent({"type": "test.pong", "source": "/t", "datacontenttype": "application/json"}, {"n": 1})
        headers, body = to_binary(pong)
        answer = httpx.post(url, headers=headers, content=body, trust_env=False)
        assert answer.status_code == 202 and answer.json()["accepted"][0]["topic"] == bus.outbox
        batch = [orjson.loads(to_structured(ping(n=i))[1]) for i in (2, 3)]
        batch[1]["type"] = "test.pong"
        answer = httpx.post(url, headers={"content-type": "application/cloudevents-batch+json"},
                            content=orjson.dumps(batch), trust_env=False)
        assert answer.status_code == 202 and len(answer.json()["accepted"]) == 2
        assert [r["n"] for r in bus.replies(2)] == [1, 3]

        unknown = CloudEvent({"type": "test.nobody", "source": "/t"}, {})
        answer = httpx.post(url, headers=to_binary(unknown)[0], content=to_binary(unknown)[1], trust_env=False)
        assert answer.status_code == 400 and "no topic for event type 'test.nobody'" in answer.json()["error"]
        broken = CloudEvent({"type": events.DATASET_READY, "source": "/t", "datacontenttype": "application/json"},
                            {"bucket": "raw-data"})
        answer = httpx.post(url, headers=to_binary(broken)[0], content=to_binary(broken)[1], trust_env=False)
        assert answer.status_code == 400 and "missing field 'object_key'" in answer.json()["error"]
        assert httpx.post(url, content=b"{}", trust_env=False).status_code == 400
        assert httpx.get(url + "healthz", trust_env=False).status_code == 200
    finally:
        bus.close()


def test_consumer_loop_survives_an_error(bus, function, monkeypatch):
    """Whatever escapes the loop thread restarts the Kafka consumer; the record comes again from the last commit."""
    from flts.dispatcher.consumer import ConsumerLoop

    original, calls = ConsumerLoop.take, []

    def flaky(self, session, tp, record):
        calls.append(record.offset)
        if len(calls) == 1:
            raise RuntimeError("injected: the consumer broke")
        return original(self, session, tp, record)

    monkeypatch.setattr(ConsumerLoop, "take", flaky)
    monkeypatch.setattr("flts.dispatcher.consumer.RESTART_PAUSE_SEC", 0.1)
    dispatcher = bus.dispatcher()
    event = ping()
    bus.send(event)
    assert bus.replies(1) == [{"in": event["id"]}]
    loop = dispatcher.loops[0]
    assert loop.is_alive() and loop.stats.restarts == 1 and "injected" in loop.stats.last_error
    assert calls == [0, 0]  # the record came again from the last commit


def test_replay_puts_dead_letters_back_once(bus, function, tmp_path):
    from flts.dispatcher import deadletters

    fixed = tmp_path / "fixed"
    bus.dispatcher(max_retries=0)
    event = ping(status=400, unless_file=str(fixed))
    bus.send(event)
    [letter] = bus.dead_letters(1)
    assert letter["event"]["id"] == event["id"]
    assert deadletters.count(bus.bootstrap, [bus.dlq])[bus.dlq] == deadletters.Count(pending=1, total=1)

    fixed.touch()  # the cause is fixed
    [replayed] = deadletters.replay(bus.bootstrap, bus.dlq)
    assert (replayed.event_id, replayed.topic) == (event["id"], bus.inbox) and "HTTP 400" in replayed.error
    assert bus.replies(1) == [{"in": event["id"]}]
    assert deadletters.replay(bus.bootstrap, bus.dlq) == []  # replaying twice re-publishes nothing
    assert deadletters.count(bus.bootstrap, [bus.dlq])[bus.dlq] == deadletters.Count(pending=0, total=1)
    assert len(bus.read(bus.inbox, 3, timeout=3)) == 2  # the original and one replay


def test_a_repeated_outcome_is_written_once_even_after_a_restart(bus, function):
    """The same input twice (a redelivery) → the function answers the same → one reply on Kafka;
    a restarted dispatcher reads the written keys back from the topic."""
    event = ping()
    first = bus.dispatcher()
    bus.send(event)
    assert bus.replies(1) == [{"in": event["id"]}]
    bus.send(event)  # delivered again, answered again, not written again
    wait_for(lambda: bus.committed() == 2, what="the repeat settled")
    first.stop()
    bus.dispatcher()  # a new process would start the same way: keys read back from Kafka
    bus.send(event)
    wait_for(lambda: bus.committed() == 3, what="the repeat after the restart settled")
    assert len(function.deliveries(event["id"])) == 3
    assert len(bus.read(bus.outbox, 2, timeout=3)) == 1
    record = bus.read(bus.outbox, 1)[0]
    assert dict(record.headers)["flts_root"] == event["id"].encode()


def test_ingress_refuses_an_output_of_no_delivery_in_flight(bus, function):
    dispatcher = bus.dispatcher()
    pong = CloudEvent({"type": "test.pong", "source": "/t", "datacontenttype": "application/json"}, {"n": 1})
    headers, body = to_binary(pong)
    answer = httpx.post(dispatcher.ingress_url + f"from/{bus.deployment}", headers=headers, content=body,
                        trust_env=False)
    assert answer.status_code == 409 and "no delivery to" in answer.json()["error"]
    assert httpx.post(dispatcher.ingress_url + "elsewhere", content=b"{}", trust_env=False).status_code == 404


def test_a_deployment_gets_no_more_in_flight_than_its_limit():
    from flts.dispatcher.settings import DispatchSettings

    settings = DispatchSettings("k:9092", concurrency=32, limits="train-gru=1, eval=4,infer=64")
    assert [settings.concurrency_for(n) for n in ("train-gru", "eval", "infer", "preprocess")] == [1, 4, 32, 32]
    with pytest.raises(ValueError, match="DISPATCH_LIMITS: 'eval=0' needs a whole number >= 1"):
        DispatchSettings("k:9092", limits="eval=0").concurrency_for("eval")


def test_the_local_stack_limits_each_deployment_to_its_capacity():
    from flts.dev import stack

    dispatcher = next(p for p in stack.plan(stack.StackConfig()) if p.kind == "dispatcher")
    limits = dict(item.split("=") for item in dispatcher.env["DISPATCH_LIMITS"].split(","))
    assert limits["train-gru"] == "1" and limits["eval"] == "1"
    targets = {item.split("=")[0] for item in dispatcher.env["DISPATCH_TARGETS"].split(",")}
    assert set(limits) == targets
