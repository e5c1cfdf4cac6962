"""The inference benchmark; the same as `flts bench` (see flts/dev/bench.py).

    .venv/bin/python benchmarks/infer_bench.py [--workers 2] [--seconds 10] [--store file|s3]
"""
import argparse
import sys

from flts.dev import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="inference function benchmark")
    bench.add_arguments(parser)
    sys.exit(bench.main(parser.parse_args()))
