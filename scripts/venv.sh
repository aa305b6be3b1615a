#!/usr/bin/env bash
# Creates the virtualenv (default .venv) with Python >= 3.11 and installs the pinned
# requirements and the project (editable). Called by `make venv`, which keeps a stamp
# so that the next run is instant until a requirements file or pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
py=${PYTHON:-python3}

if ! command -v "$py" >/dev/null 2>&1; then
  echo "coach-suite needs Python 3.11 or newer, and '$py' is not installed." >&2
  echo "Install Python 3.11+ (e.g. apt-get install python3), or point at one: make PYTHON=/path/to/python3.11 ..." >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "coach-suite needs Python 3.11 or newer; '$py' is Python $("$py" -c 'import platform; print(platform.python_version())')." >&2
  echo "Install Python 3.11+ and run: make PYTHON=python3.11 ...  (or python3.12, python3.13)" >&2
  exit 1
fi
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "$venv was made with an older Python: recreating it with $py"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  if ! "$py" -m venv "$venv"; then
    rm -rf "$venv"
    echo "'$py -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
  fi
fi
echo "installing requirements-dev.txt and the project into $venv (first run: a minute or two)"
pip_install() {
  # Some machines list extra local indexes that do not exist; pip warns once per package.
  set +e
  "$venv/bin/python" -m pip --disable-pip-version-check --quiet install "$@" 2>&1 \
    | grep -v "^WARNING: Location '.*' is ignored"
  local rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
pip_install -r requirements-dev.txt
pip_install --no-deps -e .
