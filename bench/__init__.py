"""The benchmark: `make bench` (scripts/bench.py) and its pieces."""
