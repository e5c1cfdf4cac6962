"""Tooling around the product: the local full stack, its infrastructure, the deploy generator,
the demo, benchmarks' and tests' helpers. No function imports from here."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: functions/, data/, docs/, infra/ ...
