#!/usr/bin/env bash
# VoxGate on a GPU host that reaches no package index (air-gapped), in two steps:
#
#   scripts/offline-gpu-install.sh download DIR [--python X.Y] [--arch x86_64|aarch64] [--cuda-wheels]
#                                               [--part-mb N]
#       On a machine with PyPI access, in a checkout: every wheel the service needs on the GPU host
#       (this checkout's dependencies with the `gpu` extra, onnxruntime-gpu pinned as in the Dockerfile,
#       and what `pip install -e` needs to build), for CPython X.Y (default: this machine's python3) on
#       Linux ARCH (default x86_64), into DIR, with SHA256SUMS. --cuda-wheels also fetches the CUDA and
#       cuDNN libraries as pip wheels (several GB: for a host without a CUDA 13 + cuDNN 9 install).
#       --part-mb N splits every file larger than N MiB into NAME.part.00, .01, ... (for media or
#       transfers with a size limit); `install` joins them again.
#   scripts/offline-gpu-install.sh install DIR [--venv DIR] [--system-site-packages] [--no-check]
#       On the GPU host, in a copy of the same checkout: joins split wheels, checks every wheel against
#       SHA256SUMS, creates the virtual environment (default .venv; --system-site-packages: it also sees
#       the host's packages, e.g. a torch for `voxgate export`, and what those already satisfy is not
#       installed again) and installs the checkout into it (`pip install --no-index -e '.[gpu]'`:
#       nothing is fetched), then runs `voxgate selfcheck --providers cuda`: the default model embedded
#       on the GPU and compared with its reference.
#   scripts/offline-gpu-install.sh requirements
#       Prints the requirements `download` fetches.
#
# Then, on the GPU host: `VOXGATE_PROVIDERS=cuda,cpu REDIS_URL=redis://... .venv/bin/voxgate serve` (with
# --cuda-wheels: source .venv/cuda-libraries.env first). Details: docs/performance.md, "Offline GPU hosts".
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "offline-gpu-install: $*" >&2; exit 2; }
say() { echo "offline-gpu-install: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# The onnxruntime-gpu release the container image is built with (one pin, in the Dockerfile).
ort_package() {
  local pin
  pin=$(sed -n 's/^ARG ORT_PACKAGE=\(onnxruntime-gpu==[0-9.]*\)$/\1/p' Dockerfile)
  [ -n "$pin" ] || die "no 'ARG ORT_PACKAGE=onnxruntime-gpu==...' line in the Dockerfile"
  echo "$pin"
}

# The checkout's serving requirements: pyproject's dependencies, the gpu extra (pinned as the image's),
# and the build backend `pip install -e .` needs (pip builds in isolation, from DIR as well).
requirements() {
  python3 - "$(ort_package)" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
pin = sys.argv[1]
lines = list(project["project"]["dependencies"])
for extra in project["project"]["optional-dependencies"]["gpu"]:
    lines.append(pin if extra.startswith("onnxruntime-gpu") else extra)
lines += project["build-system"]["requires"]
print("\n".join(lines))
PY
}

download() {
  local dir="" python="" arch=x86_64 cuda="" part_mb=""
  while [ $# -gt 0 ]; do
    case $1 in
      --python) python=${2:?--python X.Y}; shift 2 ;;
      --arch) arch=${2:?--arch x86_64|aarch64}; shift 2 ;;
      --cuda-wheels) cuda=1; shift ;;
      --part-mb) part_mb=${2:?--part-mb N}; shift 2 ;;
      -*) die "download: unknown option $1" ;;
      *) [ -z "$dir" ] || die "download: one DIR"; dir=$1; shift ;;
    esac
  done
  [ -n "$dir" ] || usage
  [ -n "$python" ] || python=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  [[ $python =~ ^3\.[0-9]+$ ]] || die "--python $python: give X.Y, e.g. 3.12"
  [[ $arch =~ ^(x86_64|aarch64)$ ]] || die "--arch $arch: x86_64 or aarch64"
  [[ -z $part_mb || $part_mb =~ ^[1-9][0-9]*$ ]] || die "--part-mb $part_mb: a whole number of MiB"
  if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/SHA256SUMS" ]; then
    die "$dir is not empty and holds no earlier download (no SHA256SUMS): give an empty or new folder"
  fi
  mkdir -p "$dir"
  rm -f "$dir"/*.whl "$dir"/*.part.* "$dir/SHA256SUMS"
  local reqs
  reqs=$(requirements)
  if [ -n "$cuda" ]; then
    reqs=$(echo "$reqs" | sed 's/^onnxruntime-gpu==/onnxruntime-gpu[cuda,cudnn]==/')
  fi
  say "downloading wheels for CPython $python on Linux $arch into $dir"
  local platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${tag}_${arch}")
  done
  # shellcheck disable=SC2086  # one requirement per line, none with spaces
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$python" --implementation cp "${platforms[@]}" -d "$dir" $reqs
  (cd "$dir" && sha256sum -- *.whl > SHA256SUMS)
  if [ -n "$part_mb" ]; then
    local file
    for file in "$dir"/*.whl; do
      if [ "$(stat -c %s "$file")" -gt $((part_mb * 1024 * 1024)) ]; then
        split -b "${part_mb}M" -d -a 2 "$file" "$file.part."
        rm "$file"
      fi
    done
  fi
  say "$(wc -l < "$dir/SHA256SUMS") wheels, $(du -sh "$dir" | cut -f1); copy $dir and this checkout to the GPU host, then:"
  say "  scripts/offline-gpu-install.sh install $dir"
}

# Split wheels whole again, then every wheel checked against SHA256SUMS (nothing unlisted is installed).
join_and_check() {
  local dir=$1 first name
  [ -f "$dir/SHA256SUMS" ] || die "$dir/SHA256SUMS missing: not a folder made by 'download'"
  for first in "$dir"/*.whl.part.00; do
    [ -e "$first" ] || continue
    name=${first%.part.00}
    cat "$name".part.* > "$name.joining" && mv "$name.joining" "$name" && rm "$name".part.*
  done
  (cd "$dir" && sha256sum --quiet -c SHA256SUMS) \
    || die "a wheel in $dir is missing or damaged (SHA256SUMS): copy the folder again"
  local listed present
  listed=$(awk '{print $2}' "$dir/SHA256SUMS" | sort)
  present=$(cd "$dir" && ls -- *.whl | sort)
  [ "$listed" = "$present" ] || die "$dir holds wheels SHA256SUMS does not list: $(comm -13 <(echo "$listed") <(echo "$present") | tr '\n' ' ')"
}

install() {
  local dir="" venv=.venv check=1 system=()
  while [ $# -gt 0 ]; do
    case $1 in
      --venv) venv=${2:?--venv DIR}; shift 2 ;;
      --system-site-packages) system=(--system-site-packages); shift ;;
      --no-check) check=""; shift ;;
      -*) die "install: unknown option $1" ;;
      *) [ -z "$dir" ] || die "install: one DIR"; dir=$1; shift ;;
    esac
  done
  [ -n "$dir" ] || usage
  join_and_check "$dir"
  local abs
  abs=$(cd "$dir" && pwd)
  [ -x "$venv/bin/python" ] || python3 -m venv "${system[@]}" "$venv"
  say "installing this checkout into $venv from $dir only (no index)"
  PIP_NO_INDEX=1 PIP_FIND_LINKS="$abs" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e '.[gpu]' "$(ort_package)"
  # CUDA and cuDNN from pip wheels (--cuda-wheels): ONNX Runtime finds them through LD_LIBRARY_PATH.
  local libs
  libs=$("$venv/bin/python" - <<'PY'
import glob, os, site
found = []
for root in site.getsitepackages():
    found += sorted(p for p in glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True) if os.path.isdir(p))
print(":".join(found))
PY
)
  if [ -n "$libs" ]; then
    echo "export LD_LIBRARY_PATH=\"$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" > "$venv/cuda-libraries.env"
    say "CUDA libraries from pip wheels: source $venv/cuda-libraries.env before voxgate serve"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  "$venv/bin/python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  [ -n "$check" ] || return 0
  # The provider list names CUDA even when its libraries cannot be loaded; a real session on the GPU,
  # with the default model's reference embeddings, is the check that counts.
  if "$venv/bin/voxgate" selfcheck --providers cuda; then
    say "installed: the default model runs on the GPU"
  else
    say "installed, but the GPU self-check failed (above): NVIDIA driver, CUDA 13 + cuDNN 9 libraries" \
      "(or download --cuda-wheels), or run with --no-check on a host without a GPU"
    return 1
  fi
}

case ${1:-} in
  download) shift; download "$@" ;;
  install) shift; install "$@" ;;
  requirements) requirements ;;
  *) usage ;;
esac
