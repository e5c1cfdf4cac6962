"""The `flts` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flts import __version__


def _schemas(args) -> int:
    from flts.docs import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def _demo(args) -> int:
    from flts.demo import run_demo

    return run_demo(dataset=args.dataset, workdir=Path(args.workdir), fresh=args.fresh, stages=args.until)


def _bench(args) -> int:
    from flts.serving.bench import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flts", description="Time-series forecasting pipeline as serverless functions.")
    parser.add_argument("--version", action="version", version=f"flts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline embedded (no servers) and print a forecast")
    demo.add_argument("--dataset", default="PobleSec", help="name of a dataset under data/lte (default: PobleSec)")
    demo.add_argument("--workdir", default=".flts/embedded", help="where the embedded object store and MLflow live")
    demo.add_argument("--fresh", action="store_true", help="start from an empty workdir")
    demo.add_argument("--until", default="all", choices=["preprocess", "all"], help="stop after this stage")
    demo.set_defaults(func=_demo)

    schemas = sub.add_parser("schemas", help="write the event JSON Schemas (docs/schemas)")
    schemas.add_argument("--out", default="docs/schemas")
    schemas.set_defaults(func=_schemas)

    from flts.deploy import add_parser as add_deploy_parser  # `flts deploy render|shrinkwrap`

    add_deploy_parser(sub)

    from flts.stack import add_parser as add_stack_parser  # `flts up|down|status|upload`

    add_stack_parser(sub)

    bench = sub.add_parser("bench", help="benchmark the inference function (throughput, 429s, cold start, RSS, ORT vs torch)")
    from flts.serving.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
