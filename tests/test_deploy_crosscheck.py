"""Cross-checks between the routing table, the generated files and the code they deploy."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from flts import events, routing
from flts.dev import deploy
from flts.spec import Server

REPO = Path(__file__).resolve().parent.parent
CODE_DIRS = ("flts", "functions", "template")  # where the code that reads the environment lives

# Read by of-watchdog (OpenFaaS), not by our Python: github.com/openfaas/of-watchdog config/config.go.
WATCHDOG_ENV = set(deploy.WATCHDOG_ENV)

# What a cluster deployment cannot run without (an unset S3_ENDPOINT falls back to a local
# directory, an unset MLFLOW_TRACKING_URI to a local file store: both wrong on a cluster).
REQUIRED = {
    "preprocess": {"S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"},
    "train": {"S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_TRACKING_URI", "MODEL_TYPE"},
    "eval": {"S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_TRACKING_URI", "EXPECTED_MODEL_TYPES"},
    "infer": {"S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MAX_INFLIGHT"},
    "gateway": {"S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_TRACKING_URI", "MAX_INFLIGHT"},
}
# ConfigMap values that differ from the code's defaults on purpose: cluster endpoints.
CLUSTER_SPECIFIC = {"S3_ENDPOINT", "MLFLOW_TRACKING_URI", "KAFKA_BOOTSTRAP_SERVERS"}


def code_files() -> list[Path]:
    generator = REPO / "flts" / "dev" / "deploy"  # names every variable it writes: it proves nothing
    return [p for d in CODE_DIRS for p in (REPO / d).rglob("*.py")
            if "__pycache__" not in p.parts and generator not in p.parents]


@pytest.fixture(scope="module")
def code_text() -> str:
    return "\n".join(p.read_text() for p in code_files())


@pytest.fixture(scope="module")
def dispatcher() -> list[dict]:
    return deploy.load_yaml_objects([REPO / "deploy/openfaas/dispatcher.yaml"])


def services(objects) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}


def knative_env(service: dict) -> dict[str, dict]:
    return {e["name"]: e for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}


def template_index():
    """template/flts-python/index.py, the entry point of every image."""
    spec = importlib.util.spec_from_file_location("flts_template_index", REPO / "template" / deploy.TEMPLATE / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openfaas_env_names(fn: dict) -> set[str]:
    # OpenFaaS secrets become variables in index.py, in the function its image runs
    # (event-token → EVENT_TOKEN; s3-access-key-train → S3_ACCESS_KEY in train).
    function = fn["build_args"]["FLTS_FUNCTION"]
    return set(fn.get("environment", {})) | {template_index().env_name(s, function) for s in fn.get("secrets", [])}


# --------------------------------------------------------------------------- routing
def dispatched_topics(dispatcher) -> set[tuple[str, str]]:
    """(deployment, topic) the OpenFaaS CE trigger (the dispatcher) delivers, parsed by its own code."""
    from flts.dispatcher import parse_targets, routes_from_table

    deployment = next(o for o in dispatcher if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    routes = routes_from_table(parse_targets(env["DISPATCH_TARGETS"]))
    return {(s.deployment, topic) for s in routes.subscriptions for topic in s.topics}


def test_every_routed_event_type_has_a_subscriber_on_both_platforms(knative, stack, dispatcher):
    triggers = {(o["spec"]["subscriber"]["ref"]["name"], o["spec"]["filter"]["attributes"]["type"])
                for o in knative if o["kind"] == "Trigger"}
    deployed, dispatched = set(services(knative)), dispatched_topics(dispatcher)
    pro = deploy.stack(deploy.RenderOptions(openfaas_edition=deploy.Edition.PRO))["functions"]
    for event_type, topic in routing.TOPICS.items():
        subscribers = routing.subscribers(event_type)
        assert subscribers, f"{event_type} is routed to topic {topic} but no deployment takes it"
        for d in subscribers:
            assert d.name in deployed and d.name in stack["functions"]
            assert (d.name, event_type) in triggers, f"no Trigger delivers {event_type} to {d.name}"
            assert (d.name, topic) in dispatched, f"the dispatcher (CE) does not deliver {topic} to {d.name}"
            assert topic in pro[d.name]["annotations"]["topic"].split(","), f"Pro's connector misses {topic}"


def test_triggers_filter_only_on_routed_types_and_reach_only_declared_subscribers(knative):
    for o in knative:
        if o["kind"] != "Trigger":
            continue
        event_type = o["spec"]["filter"]["attributes"]["type"]
        assert event_type in routing.TOPICS, f"{o['metadata']['name']} filters on unknown type {event_type!r}"
        ref = o["spec"]["subscriber"]["ref"]
        if ref["kind"] == "Service":
            assert event_type in routing.deployment(ref["name"]).subscribes


def test_what_a_function_emits_is_routed_and_matches_its_handler_code():
    for d in routing.DEPLOYMENTS:
        emits = d.spec.emits
        assert set(emits) <= set(routing.TOPICS)
        module = d.spec.handler.split(":")[0]
        spec = importlib.util.find_spec(module)
        if spec is None:
            pytest.fail(f"{d.name}: handler module {module} does not exist")
        files = [Path(spec.origin)]
        if spec.submodule_search_locations:  # a package: every module in it
            files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
        source = "\n".join(f.read_text() for f in files)
        made = set(re.findall(r"make_event\(\s*events\.([A-Z_]+)", source))
        assert {getattr(events, name) for name in made} == set(emits), (
            f"{d.name}: {module} makes {sorted(made)}, its spec says it emits {emits}")


def test_service_and_function_names_and_images_agree_between_knative_and_openfaas(knative, stack):
    ksvc = services(knative)
    assert sorted(ksvc) == sorted(stack["functions"]) == sorted(d.name for d in routing.DEPLOYMENTS)
    for name, service in ksvc.items():
        image = service["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == stack["functions"][name]["image"]
        function = routing.deployment(name).function
        assert f"-t {image} ." in (REPO / "functions" / function / "Dockerfile").read_text()


# --------------------------------------------------------------------------- environment
def test_every_env_variable_a_manifest_sets_is_read_by_the_code(knative, stack, dispatcher, code_text):
    set_by = {}
    for name, service in services(knative).items():
        for var in knative_env(service):
            set_by.setdefault(var, set()).add(f"Knative {name}")
    config = next(o for o in knative if o["kind"] == "ConfigMap")
    secret_keys = [k for o in knative if o["kind"] == "Secret" for k in o["stringData"]]
    for var in list(config["data"]) + secret_keys:
        set_by.setdefault(var, set()).add("ConfigMap/Secret")
    for name, fn in stack["functions"].items():
        for var in openfaas_env_names(fn) - WATCHDOG_ENV:
            set_by.setdefault(var, set()).add(f"OpenFaaS {name}")
    for o in dispatcher:
        if o["kind"] == "Deployment":
            for e in o["spec"]["template"]["spec"]["containers"][0]["env"]:
                set_by.setdefault(e["name"], set()).add("dispatcher")
    unread = {var: sorted(where) for var, where in set_by.items()
              if not re.search(rf"""["']{re.escape(var)}["']""", code_text)}
    assert not unread, f"set in manifests but read nowhere under {CODE_DIRS}: {unread}"


def test_the_env_check_would_notice_a_variable_nobody_reads(code_text):
    assert re.search(r"""["']S3_ENDPOINT["']""", code_text)
    assert not re.search(r"""["']S3_ENDPOIN["']""", code_text)


@pytest.mark.parametrize("d", routing.DEPLOYMENTS, ids=lambda d: d.name)
def test_required_env_is_set_on_both_platforms(d, knative, stack):
    required = REQUIRED[d.function]
    in_knative = set(knative_env(services(knative)[d.name]))
    in_openfaas = openfaas_env_names(stack["functions"][d.name])
    assert required <= in_knative, f"Knative {d.name} lacks {sorted(required - in_knative)}"
    assert required <= in_openfaas, f"OpenFaaS {d.name} lacks {sorted(required - in_openfaas)}"
    for key, value in d.env.items():
        assert knative_env(services(knative)[d.name])[key]["value"] == value
        assert stack["functions"][d.name]["environment"][key] == value


def test_eval_waits_for_exactly_the_trainers_that_are_deployed(knative, stack):
    trainers = sorted(d.env["MODEL_TYPE"] for d in routing.DEPLOYMENTS if "MODEL_TYPE" in d.env)
    config = next(o for o in knative if o["kind"] == "ConfigMap")["data"]
    assert sorted(config["EXPECTED_MODEL_TYPES"].split(",")) == trainers
    assert sorted(stack["functions"]["eval"]["environment"]["EXPECTED_MODEL_TYPES"].split(",")) == trainers


def model_defaults() -> dict[str, list]:
    """The defaults the settings models declare: {NAME: [defaults]} (a tuple spelt "a,b")."""
    from flts.dev.settings_docs import MODELS
    from flts.settings import env_value
    from flts.spec import load

    defaults: dict[str, list] = {}
    for field in (f for path in MODELS.values() for f in load(path).model_fields.values() if not f.is_required()):
        value = env_value(field.default) if isinstance(field.default, tuple) else field.default
        defaults.setdefault(field.validation_alias, []).append(value)
    return defaults


def same_setting(config_value: str, default: object) -> bool:
    if isinstance(default, bool):
        return config_value.lower() in ({"1", "true", "yes", "on"} if default else {"0", "false", "no", "off"})
    if isinstance(default, (int, float)):
        return float(config_value) == float(default)
    return config_value == str(default)


def test_a_knob_whose_defaults_differ_between_functions_could_not_be_shared():
    defaults = model_defaults()
    assert sorted(defaults["BATCH_SIZE"]) == [32, 256]  # infer's micro-batch, train's mini-batch
    assert not all(same_setting("256", d) for d in defaults["BATCH_SIZE"])  # so a shared key would fail
    assert same_setting("0", False) and same_setting("1.0", 1) and not same_setting("yes", False)


def test_configmap_values_equal_the_code_defaults_except_cluster_endpoints(knative):
    """One shared value per key: it must mean the code's default to every function that reads it."""
    config = next(o for o in knative if o["kind"] == "ConfigMap")["data"]
    defaults = model_defaults()
    assert {"S3_SECURE", "QUEUE_MAXSIZE"} <= set(defaults)
    differ = {k: (v, defaults[k]) for k, v in config.items() if k in defaults and k not in CLUSTER_SPECIFIC
              and not all(same_setting(v, d) for d in defaults[k])}
    assert not differ, f"ConfigMap value vs code defaults: {differ}"


# --------------------------------------------------------------------------- ports and health routes
def test_ports_agree_between_manifests_images_and_the_entry_point(knative):
    for name, service in services(knative).items():
        container = service["spec"]["template"]["spec"]["containers"][0]
        port = container["ports"][0]["containerPort"]
        assert port == deploy.PORT
        assert container["command"][-2:] == ["--listen", f"0.0.0.0:{port}"]
        function = routing.deployment(name).function
        dockerfile = (REPO / "functions" / function / "Dockerfile").read_text()
        assert f"EXPOSE {port}" in dockerfile and f"upstream_url=http://{deploy.UPSTREAM}" in dockerfile
    template = (REPO / "template" / deploy.TEMPLATE / "Dockerfile").read_text()
    assert f"EXPOSE {deploy.PORT}" in template and f"upstream_url=http://{deploy.UPSTREAM}" in template


def functions_framework_targets(main: Path) -> dict[str, set[str]]:
    """Functions in main.py decorated with @functions_framework.http → the names they call."""
    targets = {}
    for node in ast.walk(ast.parse(main.read_text())):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(dec, ast.Attribute) and dec.attr == "http" for dec in node.decorator_list):
            targets[node.name] = {c.func.id for c in ast.walk(node)
                                  if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    return targets


def service_probes(knative, function: str) -> list[dict]:
    return [s["spec"]["template"]["spec"]["containers"][0] for name, s in services(knative).items()
            if routing.deployment(name).function == function]


@pytest.mark.parametrize("function", [spec.name for spec in routing.SPECS])
def test_targets_and_health_routes_exist_in_the_function_code(function, knative):
    main = REPO / "functions" / function / "main.py"
    fs = routing.function_spec(function)
    if fs.server is Server.FUNCTIONS_FRAMEWORK:
        from flts.function_http import HEALTH_PATHS

        targets = functions_framework_targets(main)
        assert fs.entry in targets, f"no @functions_framework.http {fs.entry} in {main}"
        # functions-framework sends every path to the target; serve_events answers the probes.
        assert "serve_events" in targets[fs.entry]
        assert {fs.readiness_path, fs.liveness_path} <= set(HEALTH_PATHS)
    else:
        source = importlib.util.spec_from_file_location(f"flts_deploy_check_{function}", main)
        module = importlib.util.module_from_spec(source)
        source.loader.exec_module(module)
        app = getattr(module, fs.entry)
        routes = {(r.path, m) for r in app.routes for m in (r.methods or ())}
        assert ("/", "POST") in routes  # CloudEvents
        assert {(fs.readiness_path, "GET"), (fs.liveness_path, "GET")} <= routes
    for container in service_probes(knative, function):
        assert container["readinessProbe"]["httpGet"]["path"] == fs.readiness_path
        assert container["livenessProbe"]["httpGet"]["path"] == fs.liveness_path
