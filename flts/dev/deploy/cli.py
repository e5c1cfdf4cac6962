"""`flts deploy render|shrinkwrap|s3-accounts`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flts.dev import REPO
from flts.dev.deploy.accounts import commands
from flts.dev.deploy.cluster import KAFKA_REPLICATION, REGISTRY, Edition, RenderOptions
from flts.dev.deploy.generate import TARGETS, drift, write
from flts.dev.deploy.knative import knative_files
from flts.dev.deploy.openfaas import shrinkwrap, stack
from flts.dev.deploy.validate import edition_errors, knative_errors, stack_credential_errors, stack_errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="Knative / OpenFaaS files from the routing table")
    actions = deploy.add_subparsers(dest="deploy_command", required=True)
    render_p = actions.add_parser("render", help="write (or --check) the generated deployment files")
    render_p.add_argument("--target", choices=TARGETS, action="append",
                          help="knative or openfaas (repeatable; default: both)")
    render_p.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 when a committed file differs or a check fails")
    render_p.add_argument("--registry", default=REGISTRY, help=f"image registry prefix (default {REGISTRY})")
    render_p.add_argument("--openfaas-edition", type=Edition, choices=list(Edition), default=Edition.CE,
                          help="OpenFaaS edition stack.yml is for: ce refuses scale to zero and more than 5 "
                               "replicas; pro adds scale to zero and probe annotations (default ce)")
    render_p.add_argument("--kafka-replication", type=int, default=KAFKA_REPLICATION,
                          help=f"replicationFactor of the topics the KafkaSinks create (default {KAFKA_REPLICATION}; "
                               "1 for a single-broker test cluster)")
    render_p.set_defaults(func=_render_cmd)
    wrap = actions.add_parser("shrinkwrap", help="build context of one OpenFaaS function, as faas-cli --shrinkwrap")
    wrap.add_argument("function", help="a function name of stack.yml, e.g. train-gru")
    wrap.add_argument("outdir", help="where <outdir>/<function>/ is written (e.g. build)")
    wrap.set_defaults(func=_shrinkwrap_cmd)
    accounts = actions.add_parser("s3-accounts", help="print the commands creating each function's S3 account "
                                                      "(its grants) and its secret")
    accounts.add_argument("--target", choices=TARGETS, default="knative",
                          help="whose secrets: a Knative Secret or OpenFaaS secrets per function (default knative)")
    accounts.set_defaults(func=_accounts_cmd)


def _render_cmd(args) -> int:
    targets = args.target or list(TARGETS)
    try:
        options = RenderOptions(args.registry, args.openfaas_edition, args.kafka_replication)
    except ValueError as exc:  # a flag out of range: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.check:
        for target in targets:
            for path in write(target, options=options):
                print(path.relative_to(REPO))
        return 0
    problems = [f"{path}: differs from `flts deploy render --target {t}`"
                for t in targets for path in drift(t, options=options)]
    if "knative" in targets:
        problems += knative_errors([o for objs in knative_files(options).values() for o in objs])
    if "openfaas" in targets:
        stack_file = stack(options)
        problems += stack_errors(stack_file) + edition_errors(stack_file, options.openfaas_edition)
        problems += stack_credential_errors(stack_file)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s)" if problems else "deployment files are up to date and valid")
    return 1 if problems else 0


def _accounts_cmd(args) -> int:
    print(commands(args.target), end="")
    return 0


def _shrinkwrap_cmd(args) -> int:
    print(shrinkwrap(args.function, Path(args.outdir)))
    return 0
