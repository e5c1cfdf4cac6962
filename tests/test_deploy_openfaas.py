"""OpenFaaS: stack.yml against the stack schema, the flts-python template, shrinkwrapped build contexts."""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cloudevents.conversion import to_binary
from test_deploy_crosscheck import functions_framework_targets

from flts import events, routing
from flts.dev import deploy, processes
from flts.infer.settings import MAX_INFLIGHT
from flts.spec import functions_framework_command

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template" / deploy.TEMPLATE


def annotations(stack: dict, name: str) -> dict:
    return stack["functions"][name].setdefault("annotations", {})


def pro_stack() -> dict:
    return deploy.stack(deploy.RenderOptions(openfaas_edition=deploy.Edition.PRO))


def load_index():
    spec = importlib.util.spec_from_file_location("flts_template_index", TEMPLATE / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- stack.yml
def test_stack_file_validates_against_the_stack_schema(stack):
    assert deploy.stack_errors(stack) == []
    assert stack["version"] == "1.0"
    assert stack["provider"]["name"] == "openfaas" and stack["provider"]["gateway"].startswith("http")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["provider"].update(name="faas"), "is not one of ['openfaas']"),
    (lambda s: s.update(version="2.0"), "is not one of ['1.0']"),
    (lambda s: s["functions"]["infer"]["labels"].update({"com.openfaas.scale.min": 1}), "is not of type 'string'"),
    (lambda s: s["functions"]["infer"]["labels"].update({"com.openfaas.scale.maximum": "3"}), "should not be valid"),
    (lambda s: annotations(s, "infer").update({"com.openfaas.scale.max": "3"}), "should not be valid"),
    (lambda s: annotations(s, "infer").update({"com.openfaas.ready.http.pth": "/readyz"}), "should not be valid"),
    (lambda s: s["functions"]["infer"].update(enviroment={"A": "1"}), "enviroment"),
    (lambda s: s["functions"]["infer"]["environment"].update(MAX_INFLIGHT=64), "is not of type 'string'"),
    (lambda s: s["functions"]["infer"].pop("image"), "'image' is a required property"),
    (lambda s: s["functions"]["infer"]["limits"].update(memory="lots"), "does not match"),
    (lambda s: annotations(s, "infer").update(topic="a b"), "does not match"),
    (lambda s: s["functions"].update({"Infer_2": s["functions"]["infer"]}), "does not match"),
    (lambda s: s["configuration"]["copy"].append("../secrets"), "does not match"),
])
def test_stack_schema_rejects_what_faas_cli_or_the_gateway_would_get_wrong(stack, mutate, message):
    broken = copy.deepcopy(stack)
    mutate(broken)
    errors = deploy.stack_errors(broken)
    assert any(message in e for e in errors), errors


def test_every_deployment_is_a_function_with_scaling_labels_limits_and_secrets(stack):
    functions = stack["functions"]
    assert sorted(functions) == sorted(d.name for d in routing.DEPLOYMENTS)
    for d in routing.DEPLOYMENTS:
        fn = functions[d.name]
        assert fn["lang"] == deploy.TEMPLATE and fn["handler"] == f"./functions/{d.function}"
        assert int(fn["labels"]["com.openfaas.scale.min"]) <= int(fn["labels"]["com.openfaas.scale.max"])
        assert set(fn["limits"]) == {"cpu", "memory"}
        # its own S3 account; CE: the dispatcher sends EVENT_TOKEN, so every function requires it (event-token)
        own = [deploy.own_secret_file_name(k, d.function) for k in deploy.own_secret_keys(d.spec)]
        shared = [deploy.secret_file_name(k) for k in (*deploy.shared_secret_keys(d.spec), "EVENT_TOKEN")]
        assert fn["secrets"] == own + shared
        for key, value in d.env.items():
            assert fn["environment"][key] == value
        # of-watchdog must wait as long as the function may run
        timeout = int(fn["environment"]["exec_timeout"].rstrip("s"))
        assert timeout > d.spec.capacity.timeout_seconds


def test_inference_function_limits_inflight_requests_like_its_own_setting(stack):
    infer = stack["functions"]["infer"]
    assert infer["environment"]["max_inflight"] == infer["environment"]["MAX_INFLIGHT"] == str(MAX_INFLIGHT)


# --------------------------------------------------------------------------- editions
def test_the_committed_stack_is_for_community_edition_and_passes_its_rules(stack):
    """CE refuses scale.zero and more than 5 replicas, and ignores probe annotations: none are there."""
    assert stack == deploy.stack() and deploy.edition_errors(stack, deploy.Edition.CE) == []
    for fn in stack["functions"].values():
        assert set(fn["labels"]) == {"com.openfaas.scale.min", "com.openfaas.scale.max"}
        assert int(fn["labels"]["com.openfaas.scale.max"]) <= 5 and "annotations" not in fn


def test_pro_gets_scale_to_zero_the_kafka_topics_and_probes_on_the_spec_routes():
    stack = pro_stack()
    assert deploy.stack_errors(stack) == [] and deploy.edition_errors(stack, deploy.Edition.PRO) == []
    for d in routing.DEPLOYMENTS:
        fn = stack["functions"][d.name]
        assert fn["labels"]["com.openfaas.scale.zero"] == "true"
        assert fn["labels"]["com.openfaas.scale.max"] == str(d.spec.capacity.max_scale)
        assert fn["annotations"].get("topic") == (",".join(routing.topic_of(t) for t in d.subscribes) or None)
        # readiness: can take events; liveness: restarts the pod when it fails
        assert fn["annotations"]["com.openfaas.ready.http.path"] == d.spec.readiness_path
        assert fn["annotations"]["com.openfaas.health.http.path"] == d.spec.liveness_path
    assert any("scale.zero not available for Community Edition" in e
               for e in deploy.edition_errors(stack, deploy.Edition.CE))


@pytest.mark.parametrize("edition, mutate, message", [
    ("ce", lambda s: s["functions"]["infer"]["labels"].update({"com.openfaas.scale.zero": "true"}),
     "refused by CE: 'com.openfaas.scale.zero not available for Community Edition'"),
    ("ce", lambda s: s["functions"]["infer"]["labels"].update({"com.openfaas.scale.zero": "false"}),
     "com.openfaas.scale.zero not available"),  # refused whatever its value
    ("ce", lambda s: s["functions"]["infer"]["labels"].update({"com.openfaas.scale.max": "10"}),
     "com.openfaas.scale.max 10 is above its 5 replicas"),
    ("ce", lambda s: s["functions"]["eval"]["labels"].update({"com.openfaas.scale.min": "3",
                                                              "com.openfaas.scale.max": "2"}),
     "com.openfaas.scale.min 3 is above com.openfaas.scale.max 2"),
    ("ce", lambda s: annotations(s, "infer").update({"com.openfaas.health.http.path": "/readyz"}),
     "ignored by CE, whose probes are fixed at the watchdog's /_/health"),
    ("pro", lambda s: annotations(s, "infer").update({"com.openfaas.health.http.path": "/readyz"}),
     "com.openfaas.health.http.path /readyz sets the liveness probe"),
    ("pro", lambda s: s["functions"]["eval"]["labels"].update({"com.openfaas.scale.min": "3",
                                                               "com.openfaas.scale.max": "2"}),
     "com.openfaas.scale.min 3 is above com.openfaas.scale.max 2"),
])
def test_edition_rules_catch_a_planted_error(stack, edition, mutate, message):
    broken = copy.deepcopy(stack if edition == "ce" else pro_stack())
    mutate(broken)
    errors = deploy.edition_errors(broken, deploy.Edition(edition))
    assert any(message in e for e in errors), errors


def test_render_check_follows_the_edition(capsys):
    from flts.cli import main

    assert main(["deploy", "render", "--check", "--target", "openfaas", "--openfaas-edition", "ce"]) == 0
    assert main(["deploy", "render", "--check", "--target", "openfaas", "--openfaas-edition", "pro"]) == 1
    assert "stack.yml: differs" in capsys.readouterr().err  # committed for CE; Pro is rendered on demand


def test_dispatcher_targets_every_deployment_through_the_gateway(stack):
    objects = deploy.load_yaml_objects([REPO / "deploy/openfaas/dispatcher.yaml"])
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    from flts.dispatcher import DispatchSettings, parse_targets, routes_from_table

    targets = parse_targets(env["DISPATCH_TARGETS"])
    takers = [d.name for d in routing.DEPLOYMENTS if d.subscribes]  # the gateway takes no events
    assert sorted(targets) == sorted(takers) and set(stack["functions"]) - set(targets) == {"gateway"}
    assert all(url.endswith(f"/function/{name}") for name, url in targets.items())
    routes = routes_from_table(targets)  # the dispatcher's own parser accepts them
    assert {s.deployment for s in routes.subscriptions} == set(targets)
    settings = DispatchSettings.from_env(env)
    assert settings.timeout > max(d.spec.capacity.timeout_seconds for d in routing.DEPLOYMENTS)
    service = next(o for o in objects if o["kind"] == "Service")
    assert deploy.DISPATCHER_URL.startswith(f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.")
    assert f":{service['spec']['ports'][0]['port']}/" in deploy.DISPATCHER_URL
    for name, fn in stack["functions"].items():
        emits = routing.deployment(name).spec.emits
        assert (fn["environment"].get("K_SINK") == deploy.DISPATCHER_URL) == bool(emits)


def test_event_token_reaches_the_dispatcher_from_an_optional_secret_and_ce_functions_as_a_secret(stack, tmp_path):
    """CE: functions require and send EVENT_TOKEN; the dispatcher sends and requires the same value.
    Pro: the Kafka connector cannot send a token, so no function requires one."""
    objects = deploy.load_yaml_objects([REPO / "deploy/openfaas/dispatcher.yaml"])
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    [token] = [e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "EVENT_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "flts-event-token", "key": "EVENT_TOKEN", "optional": True}
    assert all("event-token" in fn["secrets"] for fn in stack["functions"].values())
    assert all("event-token" not in fn["secrets"] for fn in pro_stack()["functions"].values())
    (tmp_path / "event-token").write_text("s3cret\n")  # what `faas-cli secret create event-token` mounts
    env: dict[str, str] = {}
    assert load_index().secrets_to_env(tmp_path, env) == ["EVENT_TOKEN"] and env["EVENT_TOKEN"] == "s3cret"


# --------------------------------------------------------------------------- the template
def test_template_declares_its_language_and_the_process_its_dockerfile_runs():
    spec = yaml.safe_load((TEMPLATE / "template.yml").read_text())
    assert spec["language"] == TEMPLATE.name
    dockerfile = (TEMPLATE / "Dockerfile").read_text()
    assert f'fprocess="{spec["fprocess"]}"' in dockerfile
    assert f"upstream_url=http://{deploy.UPSTREAM}" in dockerfile
    assert f"EXPOSE {deploy.PORT}" in dockerfile and deploy.WATCHDOG_IMAGE in dockerfile


def test_index_loads_openfaas_secret_files_into_the_environment(tmp_path):
    index = load_index()
    (tmp_path / "s3-access-key").write_text("AKIA-test\n")
    (tmp_path / "s3-secret-key").write_text("s3cr3t")
    (tmp_path / "..data").mkdir()  # Kubernetes' mount bookkeeping, not a secret
    env = {"S3_SECRET_KEY": "set-explicitly"}
    assert index.secrets_to_env(tmp_path, env) == ["S3_ACCESS_KEY"]
    assert env == {"S3_ACCESS_KEY": "AKIA-test", "S3_SECRET_KEY": "set-explicitly"}
    assert index.secrets_to_env(tmp_path / "missing", env) == []


def test_index_listens_behind_the_watchdog_or_where_it_is_told():
    index = load_index()
    assert index.listen_address(None, {"upstream_url": "http://127.0.0.1:5000"}) == ("127.0.0.1", 5000)
    assert index.listen_address("0.0.0.0:8080", {"upstream_url": "http://127.0.0.1:5000"}) == ("0.0.0.0", 8080)
    with pytest.raises(SystemExit, match="HOST:PORT"):
        index.listen_address(None, {})
    with pytest.raises(SystemExit, match=r"FLTS_FUNCTION: .*no function named 'gunicorn'"):
        index.server_command("gunicorn", "127.0.0.1", 5000)
    with pytest.raises(SystemExit, match="FLTS_FUNCTION is not set"):
        index.server_command("", "127.0.0.1", 5000)
    command = index.server_command("infer", "127.0.0.1", 5000)
    assert command[1:4] == ["-m", "uvicorn", "main:app"] and command[-3:] == ["--port", "5000", "--no-access-log"]


# --------------------------------------------------------------------------- shrinkwrap
def copy_sources(dockerfile: str) -> list[str]:
    """Sources of the COPY lines that read the build context (not another stage)."""
    sources = []
    for line in dockerfile.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def assert_copied_sources_exist(dockerfile: str, context: Path, what: str) -> None:
    for source in copy_sources(dockerfile):
        assert list(context.glob(source)), f"{what} copies {source}, which is not in its build context"


def image_layout(context: Path, root: Path) -> Path:
    """Lay the shrinkwrapped function/ out as the template's Dockerfile does; returns the handler dir."""
    import shutil

    app, text = root / "app", (context / "Dockerfile").read_text()
    (app / "functions").mkdir(parents=True)
    moved = re.search(r"mv (/src/\S+(?: /src/\S+)*) /app/", text).group(1).split()
    shutil.copytree(context / "function", root / "src")
    for item in moved:
        shutil.move(str(root / item.lstrip("/")), app)
    shutil.move(str(root / "src"), app / "functions" / "handler")
    for removed in re.findall(r"rm -rf (/app/\S+)", text):
        shutil.rmtree(root / removed.lstrip("/"))
    return app / "functions" / "handler"


def pinned(requirements: Path) -> dict[str, str]:
    """name → version of a requirements file that pins every line (else the test fails)."""
    lines = [line for line in requirements.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+(\[[a-z,]+\])?==\S+", line) for line in lines), requirements
    return {line.split("==")[0].split("[")[0].lower(): line.split("==")[1] for line in lines}


FUNCTION_NAMES = sorted(d.name for d in routing.DEPLOYMENTS)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_shrinkwrap_context_holds_template_function_code_and_requirements(name, stack, tmp_path):
    d = routing.deployment(name)
    handler_src = REPO / "functions" / d.function
    context = deploy.shrinkwrap(name, tmp_path / "build", stack_file=stack)
    assert context == tmp_path / "build" / name
    for item in ("Dockerfile", "template.yml", "index.py"):
        assert (context / item).read_bytes() == (TEMPLATE / item).read_bytes()
    for item in handler_src.iterdir():
        if item.is_file():
            assert (context / "function" / item.name).read_bytes() == item.read_bytes()
    for extra in stack["configuration"]["copy"]:
        assert (context / "function" / extra).exists(), extra
    assert (context / "function/flts/__init__.py").exists() and (context / "function/flts/routing.py").exists()
    assert not list(context.rglob("__pycache__"))
    assert_copied_sources_exist((context / "Dockerfile").read_text(), context, "the template's Dockerfile")

    handler = image_layout(context, tmp_path / "image")
    assert (handler.parent.parent / "pyproject.toml").is_file()  # `pip install --no-deps -e .` in /app
    assert (handler.parent.parent / "flts/__init__.py").is_file() and not (handler.parent.parent / "flts/dev").exists()
    assert pinned(handler / "requirements.txt")


def test_inference_image_installs_no_torch_and_no_prophet():
    names = set(pinned(REPO / "functions/infer/requirements.txt"))
    assert "onnxruntime" in names and names.isdisjoint({"torch", "prophet", "mlflow", "pandas"}), names


def test_dispatcher_image_copies_what_exists_and_installs_its_pins_before_the_code():
    text = (REPO / "deploy/openfaas/dispatcher.Dockerfile").read_text()
    assert_copied_sources_exist(text, REPO, "dispatcher.Dockerfile")
    assert pinned(REPO / "eventing/dispatcher/requirements.txt")
    assert text.index("RUN pip install -r requirements.txt") < text.index("COPY flts/ flts/")
    workdir = re.findall(r"^WORKDIR /app/(\S+)$", text, re.MULTILINE)[-1]
    assert re.search(r"^CMD \[\"python\", \"main.py\"\]$", text, re.MULTILINE) and (REPO / workdir / "main.py").exists()


def test_shrinkwrap_refuses_unknown_functions_and_paths_outside_the_project(stack, tmp_path):
    with pytest.raises(KeyError, match="no function 'predict'"):
        deploy.shrinkwrap("predict", tmp_path, stack_file=stack)
    outside = copy.deepcopy(stack)
    outside["configuration"]["copy"] = ["../"]
    with pytest.raises(ValueError, match="outside the project"):
        deploy.shrinkwrap("infer", tmp_path, stack_file=outside)


def test_knative_dockerfiles_copy_what_exists_and_bake_the_stack_build_args(stack):
    for d in routing.DEPLOYMENTS:
        text = (REPO / "functions" / d.function / "Dockerfile").read_text()
        assert_copied_sources_exist(text, REPO, f"functions/{d.function}/Dockerfile")
        args = stack["functions"][d.name]["build_args"]
        assert args == {"FLTS_FUNCTION": d.function} and f"FLTS_FUNCTION={d.function}" in text
        assert re.search(r"^USER \d+$", text, re.MULTILINE) and "FROM python:3.11-slim" in text


def test_faas_cli_new_finds_a_function_folder_that_builds(stack, tmp_path):
    """`faas-cli new x --lang flts-python` copies template/flts-python/function/ to ./x/ (and adds
    `x: {lang: flts-python, handler: ./x, image: x:latest}` to the stack): the folder must exist,
    and the function it makes must shrinkwrap into a context its Dockerfile can build."""
    skeleton = TEMPLATE / "function"
    assert sorted(p.name for p in skeleton.iterdir()) == ["main.py", "requirements.txt"]
    project = tmp_path / "project"
    project.mkdir()
    import shutil

    for item in ("template", "flts"):
        shutil.copytree(REPO / item, project / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / item, project / item)
    shutil.copytree(skeleton, project / "x")
    new = {**copy.deepcopy(stack), "functions": {"x": {"lang": deploy.TEMPLATE, "handler": "./x", "image": "x:latest"}}}
    assert deploy.stack_errors(new) == []
    context = deploy.shrinkwrap("x", tmp_path / "build", repo=project, stack_file=new)
    assert_copied_sources_exist((context / "Dockerfile").read_text(), context, "the template's Dockerfile")
    assert pinned(context / "function/requirements.txt")
    main = context / "function/main.py"
    targets = functions_framework_targets(main)
    assert "serve_events" in targets["serve"]
    port = free_port()  # and the target serves: a CloudEvent in, 202 (the skeleton emits nothing)
    command = functions_framework_command(str(main), "serve", "127.0.0.1", port)
    with processes.running(command, cwd=context / "function", log_path=tmp_path / "x.log", what="x"):
        processes.wait_until(lambda: processes.port_open("127.0.0.1", port), 60, what="x", interval=0.2)
        upload = {"bucket": "raw-data", "object_key": "x/x.csv", "identifier": "x"}
        headers, body = to_binary(events.make_event(events.DATASET_READY, "test", upload))
        assert http("POST", f"http://127.0.0.1:{port}/", body, headers) == 202
        assert http("GET", f"http://127.0.0.1:{port}/healthz") == 200


# --------------------------------------------------------------------------- the context starts and answers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("function", [spec.name for spec in routing.SPECS])
def test_shrinkwrapped_function_starts_through_index_and_answers_on_its_routes(function, stack, tmp_path):
    """What the image runs (`python /app/index.py --listen ...`), on the shrinkwrapped code."""
    name = next(d.name for d in routing.DEPLOYMENTS if d.function == function)
    context = deploy.shrinkwrap(name, tmp_path / "build", stack_file=stack)
    port = free_port()
    env = {**os.environ, **stack["functions"][name]["build_args"], **deploy.deployment_env(routing.deployment(name)),
           "FLTS_OBJECT_DIR": str(tmp_path / "objects"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    log = tmp_path / "server.log"  # a file, not a pipe: a full pipe would block the server
    command = [sys.executable, str(context / "index.py"), "--listen", f"127.0.0.1:{port}"]
    with processes.running(command, cwd=context / "function", env=env, log_path=log, what="the server") as server:
        processes.wait_until(lambda: processes.port_open("127.0.0.1", port), 60, proc=server, what="the server",
                             log_path=log, interval=0.2)
        base = f"http://127.0.0.1:{port}"
        # Every event function answers a CloudEvent POST on `/`: this one is not a CloudEvent.
        assert http("POST", base + "/", b"{}", {"Content-Type": "application/json"}) == 400
        spec = routing.function_spec(function)
        assert http("GET", base + spec.liveness_path) == 200
        assert http("GET", base + spec.readiness_path) == 200  # ready to take events: infer without a model too
