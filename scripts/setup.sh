#!/usr/bin/env bash
# Set-up behind the README's two entry points, in two levels. Idempotent: each level leaves a stamp file
# in the virtual environment and is redone only when pyproject.toml is newer than its stamp.
#
#   scripts/setup.sh serve   (make run)   what serving needs: a redis-server binary (apt, when missing) and
#                                          a virtual environment with the service and ONNX Runtime for CPU
#                                          (`.[cpu]`: no torch, no test or lint tools)
#   scripts/setup.sh test    (make test)  serve, plus torch (pinned CPU build, first: an unpinned torch pulls
#                                          a CUDA build of several GB), the export, dev, reference and eval extras,
#                                          Debian's chromium (apt, when missing) for the /docs browser test, and
#                                          qemu-user (apt, when missing): int8 graphs are checked on emulated
#                                          AVX2-only kernels whatever CPU the tests run on; and the Python
#                                          client (clients/python), which the tests run against the service
set -euo pipefail
cd "$(dirname "$0")/.."

LEVEL=${1:-test}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
TORCH="torch==2.13.0"

say() { echo "setup: $*" >&2; }

APT_UPDATED=""
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$APT_UPDATED" ]; then
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A stamp is current when it exists and no pyproject.toml (the dependency lists) is newer.
current() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ] && [ ! clients/python/pyproject.toml -nt "$1" ]; }

setup_serve() {
  local stamp="$VENV/.voxgate-serve"
  if ! command -v redis-server >/dev/null 2>&1; then
    say "redis-server missing: installing Debian's redis-server with apt"
    apt_install redis-server
  fi
  if current "$stamp"; then
    return
  fi
  if [ ! -x "$PY" ]; then
    say "creating the virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  say "installing the service and ONNX Runtime (CPU) into $VENV (pip install -e '.[cpu]')"
  "${PIP[@]}" -e ".[cpu]"
  touch "$stamp"
  say "serving dependencies installed ($(du -sh "$VENV" | cut -f1) in $VENV)"
}

setup_test() {
  local stamp="$VENV/.voxgate-test"
  setup_serve
  if [ ! -x /usr/bin/chromium ]; then
    say "chromium missing: installing Debian's chromium with apt (headless test of the offline /docs page)"
    apt_install chromium
  fi
  if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    say "qemu-user missing: installing Debian's qemu-user with apt (int8 on emulated AVX2-only CPUs)"
    apt_install qemu-user
  fi
  if current "$stamp"; then
    return
  fi
  say "installing $TORCH (CPU build) into $VENV"
  "${PIP[@]}" "$TORCH"
  say "installing the export, dev, reference and eval extras and the Python client into $VENV (pip install -e '.[cpu,export,dev,reference,eval]' -e clients/python)"
  "${PIP[@]}" -e ".[cpu,export,dev,reference,eval]" -e clients/python
  touch "$stamp"
  say "test dependencies installed ($(du -sh "$VENV" | cut -f1) in $VENV)"
}

case "$LEVEL" in
  serve) setup_serve ;;
  test) setup_test ;;
  *)
    echo "usage: $0 serve|test" >&2
    exit 2
    ;;
esac
