#!/usr/bin/env bash
# One-shot developer set-up: a virtual environment with the service, export and dev extras, and a
# redis-server binary (installed through apt when missing). Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.voxgate-installed"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: redis-server missing, installing it with apt" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: installing Python dependencies into $VENV" >&2
  # torch first and pinned: the CPU build; an unpinned torch pulls a CUDA build of several GB.
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$PY" -m pip install -q --disable-pip-version-check -e ".[cpu,export,dev,reference]"
  touch "$STAMP"
fi
