"""`python -m flts.dispatcher`: run the dispatcher until SIGTERM or SIGINT."""
import sys

from flts.dispatcher import main

if __name__ == "__main__":
    sys.exit(main())
