#!/usr/bin/env bash
# Fails if gen/ is not exactly what scripts/gen_protos.sh makes from protos/ (a .proto edited
# without regenerating, or gen/ edited by hand). Regenerates into a temporary copy; the
# working tree is not touched. Fix: `make proto`, then commit protos/ and gen/ together.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
venv=$(cd "$(dirname "$py")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/scripts"
cp scripts/gen_protos.sh "$tmp/scripts/"
cp -R protos "$tmp/protos"
ln -s "$venv" "$tmp/.venv"
if ! (cd "$tmp" && PYTHON=".venv/bin/$(basename "$py")" bash scripts/gen_protos.sh) >"$tmp/gen.log" 2>&1; then
  cat "$tmp/gen.log" >&2
  echo "scripts/gen_protos.sh failed on protos/" >&2
  exit 1
fi
if ! diff -r -q -x __pycache__ "$tmp/gen/coach" gen/coach >/dev/null; then
  echo "gen/ is stale: it is not what scripts/gen_protos.sh makes from protos/:" >&2
  diff -r -u -x __pycache__ gen/coach "$tmp/gen/coach" | head -60 >&2 || true
  echo "run 'make proto' and commit protos/ and gen/ together" >&2
  exit 1
fi
echo "gen/: up to date with protos/ ($(find gen/coach -name '*.py' -o -name '*.pyi' | wc -l) files)"
