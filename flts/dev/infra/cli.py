"""The command line: ``python -m flts.dev.infra up|down|status|env [--json]``."""
from __future__ import annotations

import argparse
import json

from flts.dev.infra.config import InfraConfig, InfraError, client_env, say
from flts.dev.infra.lifecycle import start_all, status, stop_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flts.dev.infra", description="Local FLTS stack (no Docker)")
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    ap.add_argument("--json", action="store_true", help="status/env as JSON")
    args = ap.parse_args(argv)
    cfg = InfraConfig()
    try:
        if args.command == "up":
            start_all(cfg)
            for k, v in client_env(cfg).items():
                print(f"export {k}={v}")
        elif args.command == "down":
            if not stop_all(cfg):
                say("infra: nothing was running")
        elif args.command == "env":
            env = client_env(cfg)
            print(json.dumps(env, indent=1) if args.json else "\n".join(f"export {k}={v}" for k, v in env.items()))
        else:
            return _print_status(status(cfg), args.json)
    except InfraError as exc:
        say(f"error: {exc}")
        return 1
    return 0


def _print_status(rows: list[dict], as_json: bool) -> int:
    """Exit code 0 when every service is healthy, 3 otherwise."""
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            state = "healthy" if r["healthy"] else ("UNHEALTHY" if r["pid"] else "stopped")
            print(f"{r['name']:<9} {state:<10} pid={r['pid'] or '-':<8} {r['url']}")
    return 0 if all(r["healthy"] for r in rows) else 3
