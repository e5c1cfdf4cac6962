"""`python -m flts.dev.infra up|down|status|env`."""
import sys

from flts.dev.infra.cli import main

sys.exit(main())
