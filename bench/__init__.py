"""The benchmark: `make bench` (scripts/bench.py) and its pieces."""

# Before anything here imports grpc: the suite's settings for every process (gRPC's fork
# support off; see services/__init__.py). The bench process starts and stops PostgreSQL.
import services  # noqa: F401
