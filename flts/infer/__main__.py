"""`python -m flts.infer serve ...`: the inference function on uvicorn (httptools + uvloop)."""
import sys

from flts.infer.server import serve

if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m flts.infer serve [options]   (--help after serve)")
    sys.exit(serve(sys.argv[2:]))
