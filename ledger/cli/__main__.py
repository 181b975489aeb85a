"""`python -m ledger.cli`: how the ledger starts its own processes (services, tests, benches)."""

import sys

from ledger.cli import main

sys.exit(main())
