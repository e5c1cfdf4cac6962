"""The `flts` command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flts import __version__
from flts.logs import configure
from flts.settings import ConfigError, Env


def _schemas(args) -> int:
    from flts.dev.schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def _settings_docs(args) -> int:
    from flts.dev.settings_docs import write_docs

    for path in write_docs(Path(args.docs)):
        print(path)
    return 0


def _demo(args) -> int:
    from flts.dev.demo import run_demo

    return run_demo(dataset=args.dataset, workdir=Path(args.workdir), fresh=args.fresh, stages=args.until)


def _fail(message: str) -> int:
    """A CLI input or environment error: one line on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def _history_rows(base: str, timeout: float) -> int:
    """How many rows the served model needs (GET /readyz: model.history_rows; this wakes a scaled-to-zero infer)."""
    import urllib.request

    import orjson

    with urllib.request.urlopen(base + "/readyz", timeout=timeout) as response:
        ready = orjson.loads(response.read())
    if ready.get("model") is None:
        raise SystemExit(f"error: {base} serves no model yet: {ready.get('reason', 'nothing promoted')}")
    return int(ready["model"]["history_rows"])


def _predict(args) -> int:
    """POST the last rows of a CSV to a running infer and print the forecast."""
    import urllib.error
    import urllib.parse
    import urllib.request

    import orjson

    from flts.auth import bearer_header
    from flts.dev.forecast import last_rows, request_body

    if not Path(args.csv).is_file():
        return _fail(f"no such file: {args.csv}")
    if args.url is None:
        from flts.dev.stack import StackConfig, deployment_url

        args.url = deployment_url(StackConfig(), "infer")
    if urllib.parse.urlsplit(args.url).scheme not in ("http", "https"):
        return _fail(f"--url must be an http:// or https:// URL, got {args.url!r}")
    base = args.url.rstrip("/")
    try:
        rows = args.rows or _history_rows(base, args.timeout)
        body = request_body(last_rows(Path(args.csv), rows), args.timestamp_column)
        headers = {"Content-Type": "application/json", **bearer_header(os.environ.get("PREDICT_API_KEY", ""))}
        request = urllib.request.Request(base + "/predict", data=orjson.dumps(body), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:  # a 4xx/5xx carries the reason in its JSON body
        return _fail(f"{args.url} answered {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        return _fail(f"cannot reach {args.url}: {exc} (is the stack up? `flts status`)")
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    _print_status_url(answer.get("identifier"))
    return 0


def _print_status_url(identifier: str | None) -> None:
    """With the local stack's gateway up, where to follow the model that answered (on stderr: stdout stays JSON)."""
    from flts.dev.stack import StackConfig, gateway_url

    try:
        gateway = gateway_url(StackConfig())
    except Exception:  # noqa: BLE001 - a hint only: no stack state, no gateway
        return
    if gateway:
        print(f"status: {gateway}/pipelines/{identifier}" if identifier else f"status page: {gateway}/", file=sys.stderr)


def _bench(args) -> int:
    from flts.dev.bench import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flts", description="Time-series forecasting pipeline as serverless functions.")
    parser.add_argument("--version", action="version", version=f"flts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline embedded (no servers) and print a forecast")
    demo.add_argument("--dataset", default="PobleSec", help="a dataset under data/ (PobleSec, ElBorn in data/lte; Bike in data/bike; default: PobleSec)")
    demo.add_argument("--workdir", default=".flts/embedded", help="where the embedded object store and MLflow live")
    demo.add_argument("--fresh", action="store_true", help="start from an empty workdir")
    demo.add_argument("--until", default="all", choices=["preprocess", "all"], help="stop after this stage")
    demo.add_argument("--json", action="store_true",
                      help="the functions' log lines as JSON, all of them, as deployed functions write them "
                           "(default: short text lines from WARNING up; LOG_FORMAT and LOG_LEVEL override)")
    demo.set_defaults(func=_demo)

    predict = sub.add_parser("predict", help="forecast from the last rows of a CSV with a running infer (POST /predict; "
                                             "sends $PREDICT_API_KEY as a bearer token when set)")
    predict.add_argument("csv", help="a CSV with the timestamp and the model's feature columns")
    predict.add_argument("--url", default=None, help="infer's base URL (default: the local stack's infer)")
    predict.add_argument("--rows", type=_positive_int, default=None,
                         help="how many of the last rows to send (default: the model's history_rows from /readyz)")
    predict.add_argument("--timestamp-column", default="time")
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds (a cold start from zero included)")
    predict.set_defaults(func=_predict)

    schemas = sub.add_parser("schemas", help="write the event JSON Schemas (docs/schemas)")
    schemas.add_argument("--out", default="docs/schemas")
    schemas.set_defaults(func=_schemas)

    settings_docs = sub.add_parser("settings-docs", help="regenerate the settings tables in docs/*.md from the settings models")
    settings_docs.add_argument("--docs", default="docs")
    settings_docs.set_defaults(func=_settings_docs)

    from flts.dev.deploy import add_parser as add_deploy_parser  # `flts deploy render|shrinkwrap`

    add_deploy_parser(sub)

    from flts.dev.stack import add_parser as add_stack_parser  # `flts up|down|status|upload`

    add_stack_parser(sub)

    bench = sub.add_parser("bench", help="benchmark the inference function (throughput, 429s, cold start, RSS, ORT vs torch)")
    from flts.dev.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def _logging_env(args) -> Env:
    if args.command != "demo":
        return os.environ
    from flts.dev.demo import logging_env

    return logging_env(os.environ, json_lines=args.json)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure(_logging_env(args))
    except ConfigError as exc:  # a bad LOG_LEVEL or LOG_FORMAT: a usage error, not a traceback
        parser.error(str(exc))
    try:
        return args.func(args)
    except OSError as exc:  # a path that cannot be read or written: the user's to fix, one line
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
