"""`python -m flts.infra up|down|status|env`."""
import sys

from flts.infra.cli import main

sys.exit(main())
