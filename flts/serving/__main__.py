"""`python -m flts.serving serve ...` (the function) or `python -m flts.serving frontdoor ...` (scale to zero)."""
import sys


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "serve":
        from flts.serving.server import serve

        return serve(argv[1:])
    if command == "frontdoor":
        from flts.serving.frontdoor import main as frontdoor

        return frontdoor(argv[1:])
    print("usage: python -m flts.serving {serve|frontdoor} [options]   (--help after the command)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
