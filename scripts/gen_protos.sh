#!/usr/bin/env bash
# Regenerates gen/ from protos/: Python messages, gRPC stubs and mypy stubs.
# The proto path is the Python path: coach/router/v1/router_service.proto
# becomes `from coach.router.v1 import router_service_pb2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf gen/coach
mkdir -p gen
protos=$(cd protos && find coach -name '*.proto' | sort)
(cd protos && PATH="$(cd .. && pwd)/$(dirname "$PY"):$PATH" "../$PY" -m grpc_tools.protoc -I . \
  --python_out=../gen --grpc_python_out=../gen \
  --mypy_out=../gen --mypy_grpc_out=../gen $protos)
# Packages, so setuptools and mypy see them as regular packages.
find gen/coach -type d -exec touch {}/__init__.py \;
touch gen/coach/py.typed
