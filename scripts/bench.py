#!/usr/bin/env python3
"""`make bench`: cost, quality and speed side by side (see bench/run.py).

Usage: ``scripts/bench.py [--quick] [--seed N] [--out DIR]``. Writes
bench/results/latest.md (a README-ready section) and latest.json, and prints the table.
Exit status 1 when a target is missed (full mode only).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
