"""Serving a fleet: N small models promoted into a file store, served by one infer process;
the same as `flts bench --fleet N` (see flts/dev/bench.py, run_fleet).

    .venv/bin/python benchmarks/infer_fleet.py [--fleet 1000] [--fleet-hidden 16] [--fleet-seconds 3]
"""
import argparse
import sys

from flts.dev import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="inference function: a fleet of models in one process")
    bench.add_arguments(parser)
    parser.set_defaults(fleet=1000)
    sys.exit(bench.main(parser.parse_args()))
