#!/usr/bin/env bash
# `docker compose up`, for real: build the CPU image from the Dockerfile, start the stack from
# docker-compose.yml + docker-compose.cpu.yml and use it as a client would, on 127.0.0.1 only.
#
#   make compose-smoke            (or: bash scripts/compose-smoke.sh)
#
# Engine: Docker with Compose where a Docker engine answers; otherwise podman with podman-compose, as on
# CI's Debian machine without Docker. Nothing there comes from an image registry (none is reachable):
#   - a Debian bookworm base image made with mmdebstrap (Debian's packages), the runtime stage's base
#     (RUNTIME_IMAGE); the build stages (BUILD_IMAGE) run on it plus the host's CA bundle as pip's `cert`
#     (scripts/compose-smoke/build-base.Dockerfile), which never reaches the runtime image;
#   - a Redis image from Debian's redis-server (scripts/compose-smoke/redis.Dockerfile) in place of
#     redis:8.2.2-alpine; scripts/compose-smoke/override.yml, the third compose file, names them.
# What it checks, in order: the image builds and keeps its HEALTHCHECK; /readyz; the API's and Redis's
# health checks pass; the API runs as uid 10001, without torch or the host's CA bundle; 401 without a key;
# a key from `compose exec api voxgate keys create`; enroll, verify and identify with examples/audio;
# voiceprints and keys kept across a restart of the API and one of Redis; `compose stop` ends both with
# exit status 0; `compose down -v` leaves no container, volume or network. Each wait and call is bounded.
#
# It removes what it started (containers, volumes, networks), on failure and on Ctrl-C too; the images it
# made stay, so that a second run reuses them and the build's layer cache (VOXGATE_SMOKE_REMOVE_IMAGES=1
# removes them as well).
#
# With podman it installs what it lacks: podman, runc, netavark, aardvark-dns, iptables and mmdebstrap
# with apt, podman-compose (PyPI) in a virtual environment of its own. podman runs as root with a
# configuration of this script's own (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF: its images, containers
# and networks live under VOXGATE_SMOKE_STATE, apart from any other podman use of the machine), so
# nothing in /etc/containers is changed. Needs root (as CI has): `sudo make compose-smoke`.
#
# Settings (environment): VOXGATE_SMOKE_ENGINE=auto|docker|podman, VOXGATE_SMOKE_STATE (default
# /var/lib/voxgate-compose-smoke), VOXGATE_SMOKE_READY_TIMEOUT_S (default 300),
# VOXGATE_SMOKE_REMOVE_IMAGES=1, VOXGATE_SMOKE_REFRESH_BASE=1 (make the Debian base anew).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=voxgate-smoke
ENGINE=${VOXGATE_SMOKE_ENGINE:-auto}
STATE=${VOXGATE_SMOKE_STATE:-/var/lib/voxgate-compose-smoke}
RUN_DIR=/run/voxgate-compose-smoke
READY_TIMEOUT_S=${VOXGATE_SMOKE_READY_TIMEOUT_S:-300}
PODMAN_COMPOSE=podman-compose==1.6.0
SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
# Long enough for a cold build on 2 cores (about 70 s here) with a slow download, short enough for CI.
BUILD_TIMEOUT_S=900
# One compose or engine call that is not a build or a wait (create, restart, stop, down, exec).
CALL_TIMEOUT_S=120

# The local images (the Debian base's name, with a hash of its recipe, is set below with that recipe).
export VOXGATE_SMOKE_BUILD_IMAGE=localhost/voxgate-smoke/debian-build:$SUITE
export VOXGATE_SMOKE_REDIS_IMAGE=localhost/voxgate-smoke/redis:$SUITE
# The compose files' own variables: a tag of the smoke test's own, the port on loopback only, the
# bundled model; none taken from the caller's environment.
export IMAGE_TAG=smoke
export PRETRAINED=""
unset VOXGATE_MODEL_DIR VOXGATE_VOICEPRINT_KEY COMPOSE_FILE COMPOSE_PROJECT_NAME COMPOSE_PROFILES
COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.cpu.yml -f scripts/compose-smoke/override.yml)
API_IMAGE=voxgate:$IMAGE_TAG-cpu
AUDIO=examples/audio

say() { echo "compose-smoke: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}

# --- phases and their times ------------------------------------------------------------------------------
PHASES=()
PHASE=""
PHASE_START=""
RUN_START=$EPOCHREALTIME
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
phase_end() {
  if [ -n "$PHASE" ]; then
    PHASES+=("$PHASE $(seconds_since "$PHASE_START") s")
    PHASE=""
  fi
}
phase() {
  phase_end
  PHASE=$1
  PHASE_START=$EPOCHREALTIME
  say "--- $1: $2"
}
report_phases() {
  phase_end
  local joined
  joined=$(printf '%s, ' "${PHASES[@]}")
  say "times: ${joined%, }; total $(seconds_since "$RUN_START") s"
}

# --- the engine ------------------------------------------------------------------------------------------
ENGINE_CMD=()
COMPOSE_CMD=()

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }

choose_engine() {
  if [ "$ENGINE" = auto ]; then
    if docker_answers; then ENGINE=docker; else ENGINE=podman; fi
  fi
  case "$ENGINE" in
    docker | podman) ;;
    *) die "VOXGATE_SMOKE_ENGINE=$ENGINE: auto, docker or podman" ;;
  esac
  [ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap makes the base image as root; podman runs as root):" \
    "sudo make compose-smoke"
  say "engine: $ENGINE"
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "not a Debian machine: install $* by hand, or run with a Docker engine (VOXGATE_SMOKE_ENGINE=docker)"
  say "installing with apt: $*"
  timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_packages() {
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}

# podman as root on a machine like CI's: the hard RLIMIT_NOFILE is below podman's default 1048576 and
# root cannot raise it (every container fails with `setrlimit RLIMIT_NOFILE: Operation not permitted`),
# and crun refuses hybrid cgroups, so runc with cgroupfs. No systemd either: events to a file.
write_podman_config() {
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  mkdir -p "$STATE/networks"
  cat >"$STATE/containers.conf" <<EOF
# Written by scripts/compose-smoke.sh for its own podman runs (CONTAINERS_CONF); not read otherwise.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[network]
network_backend = "netavark"
network_config_dir = "$STATE/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUN_DIR/libpod"
EOF
  cat >"$STATE/storage.conf" <<EOF
# Written by scripts/compose-smoke.sh for its own podman runs (CONTAINERS_STORAGE_CONF).
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$RUN_DIR/storage"
EOF
  export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf
  # podman builds OCI images by default, and OCI images have no HEALTHCHECK.
  export BUILDAH_FORMAT=docker
  # /run is no tmpfs here: forget the run-time state of an earlier boot, as a reboot would.
  local boot_id
  boot_id=$(cat /proc/sys/kernel/random/boot_id)
  if [ "$(cat "$STATE/boot_id" 2>/dev/null)" != "$boot_id" ]; then
    rm -rf "$RUN_DIR"
    echo "$boot_id" >"$STATE/boot_id"
  fi
}

setup_podman() {
  local missing
  mapfile -t missing < <(missing_packages podman runc netavark aardvark-dns iptables mmdebstrap curl)
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
  mkdir -p "$STATE"
  local venv=$STATE/podman-compose
  if [ "$("$venv/bin/python" -m pip freeze 2>/dev/null | grep -i '^podman-compose==')" != "$PODMAN_COMPOSE" ]; then
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    say "installing $PODMAN_COMPOSE into $venv (Debian's 1.0.3 cannot read docker-compose.cpu.yml's !reset)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout 300 "$venv/bin/python" -m pip install -q --disable-pip-version-check "$PODMAN_COMPOSE"
  fi
  write_podman_config
  ENGINE_CMD=(podman)
  COMPOSE_CMD=("$venv/bin/podman-compose" --project-name "$PROJECT" "${COMPOSE_FILES[@]}")
}

setup_docker() {
  local missing
  mapfile -t missing < <(missing_packages mmdebstrap curl)
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
  timeout 20 docker compose version >/dev/null 2>&1 || die "docker answers, but has no compose plugin"
  ENGINE_CMD=(docker)
  COMPOSE_CMD=(docker compose --project-name "$PROJECT" "${COMPOSE_FILES[@]}")
}

# Engine and compose calls, each bounded in time (engine_for/compose_for SECONDS ...), and none holding the
# run's lock (fd 9): podman's conmon and aardvark-dns outlive the call that started them.
bounded() {
  local limit=$1 status=0
  shift
  timeout "$limit" "$@" 9>&- || status=$?
  [ "$status" -ne 124 ] || say "timed out after $limit s: ${*:1:6}"
  return "$status"
}
engine_for() { bounded "$1" "${ENGINE_CMD[@]}" "${@:2}"; }
compose_for() { bounded "$1" "${COMPOSE_CMD[@]}" "${@:2}"; }
engine() { engine_for "$CALL_TIMEOUT_S" "$@"; }
compose() { compose_for "$CALL_TIMEOUT_S" "$@"; }
image_exists() { engine image inspect "$1" >/dev/null 2>&1; }

# The labels both Compose and podman-compose put on what they create.
project_containers() { engine ps -a -q --filter "label=com.docker.compose.project=$PROJECT"; }
service_container() {
  engine ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}
project_volumes() { engine volume ls -q | grep -E "^${PROJECT}[_-]" || true; }
project_networks() { engine network ls --format '{{.Name}}' | grep -E "^${PROJECT}[_-]" || true; }

# --- base images -----------------------------------------------------------------------------------------
# Made as Debian's own container images are: minbase; no manual pages, documentation (but copyrights) or
# translations, in the base and in whatever apt installs on top of it; apt's docker-clean, so that no
# package cache stays in a layer (the Dockerfile, written for such bases, relies on it).
# shellcheck disable=SC2016 # the last hook's "$1" is the new root, for mmdebstrap to fill in
MMDEBSTRAP_ARGS=(
  --variant=minbase --format=tar --skip=output/dev
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --customize-hook='copy-in scripts/compose-smoke/apt.conf.d/docker-clean /etc/apt/apt.conf.d'
  --customize-hook='copy-in scripts/compose-smoke/apt.conf.d/docker-no-languages /etc/apt/apt.conf.d'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
  "$SUITE" -
  "deb $DEBIAN_MIRROR $SUITE main"
  "deb $DEBIAN_MIRROR $SUITE-updates main"
  "deb ${DEBIAN_MIRROR}-security $SUITE-security main"
)
# Tagged with a hash of that recipe: a changed recipe makes a new base.
VOXGATE_SMOKE_BASE_IMAGE=localhost/voxgate-smoke/debian:$SUITE-$(
  { printf '%s\n' "${MMDEBSTRAP_ARGS[@]}"; cat scripts/compose-smoke/apt.conf.d/*; } | sha256sum | cut -c1-12
)
export VOXGATE_SMOKE_BASE_IMAGE VOXGATE_SMOKE_RUNTIME_IMAGE=$VOXGATE_SMOKE_BASE_IMAGE

make_base_images() {
  if [ -n "${VOXGATE_SMOKE_REFRESH_BASE:-}" ] || ! image_exists "$VOXGATE_SMOKE_BASE_IMAGE"; then
    say "making $VOXGATE_SMOKE_BASE_IMAGE with mmdebstrap (Debian $SUITE)"
    local tarball=$STATE/debian-$SUITE.tar
    mkdir -p "$STATE"
    timeout 600 mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" >"$tarball"
    engine_for 300 import --change 'CMD ["bash"]' "$tarball" "$VOXGATE_SMOKE_BASE_IMAGE" >/dev/null
    rm -f "$tarball"
    # Bases of an earlier recipe.
    local old
    for old in $(engine images --format '{{.Repository}}:{{.Tag}}' | grep "^${VOXGATE_SMOKE_BASE_IMAGE%:*}:"); do
      [ "$old" = "$VOXGATE_SMOKE_BASE_IMAGE" ] || engine rmi "$old" >/dev/null 2>&1 || true
    done
  else
    say "$VOXGATE_SMOKE_BASE_IMAGE: kept from an earlier run (VOXGATE_SMOKE_REFRESH_BASE=1 makes it anew)"
  fi
  local context
  context=$(mktemp -d "${TMPDIR:-/tmp}/voxgate-smoke-base.XXXXXX")
  # The host's CA bundle, whatever it trusts (a local CA that re-signs outgoing HTTPS included).
  local bundle
  for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -f "$bundle" ] && break
  done
  [ -f "$bundle" ] || die "no CA bundle found on the host (looked for /etc/ssl/certs/ca-certificates.crt)"
  cp "$bundle" "$context/host-ca.pem"
  engine_for 300 build -q --build-arg "BASE=$VOXGATE_SMOKE_BASE_IMAGE" \
    -f scripts/compose-smoke/build-base.Dockerfile -t "$VOXGATE_SMOKE_BUILD_IMAGE" "$context" >/dev/null
  rm -rf "$context"
  engine_for 600 build -q --build-arg "BASE=$VOXGATE_SMOKE_BASE_IMAGE" \
    -f scripts/compose-smoke/redis.Dockerfile -t "$VOXGATE_SMOKE_REDIS_IMAGE" scripts/compose-smoke >/dev/null
}

# --- HTTP, on loopback only -------------------------------------------------------------------------------
PORT=""
BODY=""
KEY=""

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http METHOD PATH [curl arguments...]: the status code (000: no answer); the body in $BODY.
http() {
  local method=$1 path=$2
  shift 2
  curl -sS --max-time 60 -o "$BODY" -w '%{http_code}' -X "$method" "$@" "http://127.0.0.1:$PORT$path" \
    2>/dev/null || true
}

# A JSON value of the last body: jget KEY... (strings bare, anything else as JSON).
jget() {
  python3 - "$BODY" "$@" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1], encoding="utf-8"))
for key in sys.argv[2:]:
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value if isinstance(value, str) else json.dumps(value))
EOF
}

expect() { # expect WHAT WANTED GOT
  [ "$2" = "$3" ] || die "$1: expected $2, got $3; body: $(head -c 600 "$BODY" 2>/dev/null)"
  say "ok: $1"
}

# Until /readyz answers 200, at most READY_TIMEOUT_S.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT_S)) status=000
  while [ "$SECONDS" -lt "$deadline" ]; do
    status=$(http GET /readyz)
    [ "$status" = 200 ] && {
      say "ok: /readyz 200 ($1)"
      return
    }
    sleep 1
  done
  die "/readyz not 200 within ${READY_TIMEOUT_S} s ($1): last status $status, body $(head -c 600 "$BODY")"
}

# A container's own health check (the image's HEALTHCHECK, or compose's healthcheck), run once now: podman
# without systemd never runs it by itself (it logs "unable to get systemd connection to add healthchecks").
run_healthcheck() {
  local container config argv
  container=$(service_container "$1")
  config=$(engine inspect --format '{{json .Config.Healthcheck.Test}}' "$container")
  mapfile -d '' -t argv < <(python3 -c '
import json, sys
test = json.loads(sys.argv[1])
kind, args = test[0], test[1:]
argv = args if kind == "CMD" else ["/bin/sh", "-c", " ".join(args)] if kind == "CMD-SHELL" else []
sys.stdout.write("".join(a + "\0" for a in argv))
' "$config")
  [ "${#argv[@]}" -gt 0 ] || die "$1 has no health check (got $config)"
  engine exec "$container" "${argv[@]}" >/dev/null || die "$1's health check failed: ${argv[*]}"
  say "ok: $1's health check passes (${argv[*]})"
}

authed() { http "$@" -H "Authorization: Bearer $KEY"; }

check_voiceprints() { # the speaker enrolled earlier is there, verifies and is identified ($1: when)
  expect "GET /speakers/spk1688 ($1)" 200 "$(authed GET /speakers/spk1688)"
  expect "verify 0005 against spk1688 ($1)" 200 \
    "$(authed POST /verify -F speaker_id=spk1688 -F audio=@$AUDIO/1688-142285-0005.flac)"
  expect "verify 0005 matches ($1)" true "$(jget match)"
  expect "identify 0006 ($1)" 200 "$(authed POST /identify -F audio=@$AUDIO/1688-142285-0006.flac)"
  expect "identify 0006 names spk1688 ($1)" spk1688 "$(jget speaker_id)"
}

# --- clean-up ----------------------------------------------------------------------------------------------
STARTED=""
DOWN_DONE=""

show_logs() {
  [ -n "$STARTED" ] || return 0
  say "compose ps and the last log lines:"
  compose ps >&2 || true
  local service container
  for service in redis api; do
    container=$(service_container "$service" 2>/dev/null || true)
    [ -n "$container" ] || continue
    echo "--- $service" >&2
    engine logs --tail 60 "$container" >&2 || true
  done
}

remove_started() {
  # The compose file's own removal first; then, whatever it left, by label and name.
  compose down -v --timeout 10 >/dev/null 2>&1 || say "compose down -v failed; removing by label"
  local ids
  mapfile -t ids < <(project_containers 2>/dev/null)
  [ "${#ids[@]}" -eq 0 ] || engine rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
  if [ "$ENGINE" = podman ]; then
    engine pod rm -f "pod_$PROJECT" >/dev/null 2>&1 || true
  fi
  mapfile -t ids < <(project_volumes 2>/dev/null)
  [ "${#ids[@]}" -eq 0 ] || engine volume rm -f "${ids[@]}" >/dev/null 2>&1 || true
  mapfile -t ids < <(project_networks 2>/dev/null)
  [ "${#ids[@]}" -eq 0 ] || engine network rm "${ids[@]}" >/dev/null 2>&1 || true
}

# Superseded builds (untagged images) go. Docker keeps its build cache apart from its images; podman's
# build cache is untagged images, the current build's among them, so there they go only once the storage
# passes VOXGATE_SMOKE_STORAGE_MB (default 8000): then the next build starts from the base images.
prune_images() {
  if [ "$ENGINE" = podman ]; then
    local used_mb
    used_mb=$(du -sm "$STATE/storage" 2>/dev/null | cut -f1)
    [ "${used_mb:-0}" -gt "${VOXGATE_SMOKE_STORAGE_MB:-8000}" ] || return 0
    say "podman storage at $used_mb MB: removing untagged images (the build cache among them)"
  fi
  engine image prune -f >/dev/null 2>&1
}

on_exit() {
  local status=$?
  set +e
  phase_end
  if [ "$status" -ne 0 ]; then show_logs; fi
  PHASE=cleanup
  PHASE_START=$EPOCHREALTIME
  if [ -n "$STARTED" ] && [ -z "$DOWN_DONE" ]; then
    say "removing the stack's containers, volumes and networks"
    remove_started
  fi
  [ "${#ENGINE_CMD[@]}" -eq 0 ] || prune_images
  if [ -n "${VOXGATE_SMOKE_REMOVE_IMAGES:-}" ] && [ "${#ENGINE_CMD[@]}" -gt 0 ]; then
    engine rmi -f "$API_IMAGE" "$VOXGATE_SMOKE_REDIS_IMAGE" "$VOXGATE_SMOKE_BUILD_IMAGE" \
      "$VOXGATE_SMOKE_BASE_IMAGE" >/dev/null 2>&1
    engine image prune -a -f >/dev/null 2>&1
  fi
  [ -z "$BODY" ] || rm -f "$BODY"
  report_phases
  if [ "$status" -eq 0 ]; then say "passed"; else say "FAILED (exit status $status)"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the run -----------------------------------------------------------------------------------------------
phase tools "engine and tools"
choose_engine
# One run at a time on a machine: they share the project name, the port range and the state.
mkdir -p "$STATE"
exec 9>"$STATE/lock"
flock -w 900 9 || die "another compose-smoke run holds $STATE/lock"
if [ "$ENGINE" = podman ]; then setup_podman; else setup_docker; fi
BODY=$(mktemp "${TMPDIR:-/tmp}/voxgate-smoke-body.XXXXXX")
# Whatever an interrupted earlier run left.
if [ -n "$(project_containers)$(project_volumes)" ]; then
  say "removing what an earlier run left"
  STARTED=1
  remove_started
  STARTED=""
fi

phase bases "local base images"
make_base_images

phase build "the CPU image, through compose (docker-compose.yml + docker-compose.cpu.yml + override)"
compose_for "$BUILD_TIMEOUT_S" build api
size=$(engine image inspect --format '{{.Size}}' "$API_IMAGE")
say "image $API_IMAGE: $((size / 1000000)) MB"
healthcheck=$(engine image inspect --format '{{json .Config.Healthcheck}}' "$API_IMAGE")
case "$healthcheck" in
  *healthz*) say "ok: the image keeps its HEALTHCHECK" ;;
  *) die "the image lost its HEALTHCHECK (an OCI-format build?): $healthcheck" ;;
esac

phase up "compose up -d, until /readyz"
PORT=$(free_port)
export API_PORT=127.0.0.1:$PORT
STARTED=1
compose up -d
wait_ready "first start"
run_healthcheck api
run_healthcheck redis

phase checks "the image's user and contents, keys, enroll, verify, identify"
expect "the API's user id (non-root)" 10001 "$(compose exec -T api id -u | tr -d '\r')"
expect "the host's CA bundle and pip's cert (build stages only) in the image" absent \
  "$(compose exec -T api sh -c '[ -e /etc/ssl/certs/host-ca.pem ] || [ -e /etc/pip.conf ] && echo present || echo absent' |
    tr -d '\r')"
expect "torch in the serving image" absent "$(compose exec -T api python3 -c \
  'import importlib.util; print("present" if importlib.util.find_spec("torch") else "absent")' | tr -d '\r')"
expect "GET /speakers without a key" 401 "$(http GET /speakers)"
expect "401 body: problem code" missing_api_key "$(jget code)"
KEY=$(compose exec -T api voxgate keys create --tenant smoke --name compose-smoke --json |
  python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["key"])')
[ -n "$KEY" ] || die "compose exec api voxgate keys create printed no key"
say "ok: a key from compose exec api voxgate keys create"
expect "GET /speakers with the key" 200 "$(authed GET /speakers)"
expect "enroll spk1688 (3 recordings)" 200 "$(authed POST /enroll -F speaker_id=spk1688 \
  -F audio=@$AUDIO/1688-142285-0002.flac -F audio=@$AUDIO/1688-142285-0003.flac \
  -F audio=@$AUDIO/1688-142285-0004.flac)"
expect "enrolled" true "$(jget enrolled)"
check_voiceprints "after enrollment"
expect "verify another speaker (p225) against spk1688" 200 \
  "$(authed POST /verify -F speaker_id=spk1688 -F audio=@$AUDIO/p225_003.flac)"
expect "p225 does not match spk1688" false "$(jget match)"
expect "identify p225 (enrolled by nobody)" 200 "$(authed POST /identify -F audio=@$AUDIO/p225_003.flac)"
expect "identify p225 names nobody" null "$(jget speaker_id)"

phase restart-api "compose restart api: keys and voiceprints are in Redis"
api_started=$(engine inspect --format '{{.State.StartedAt}}' "$(service_container api)")
compose restart api
[ "$(engine inspect --format '{{.State.StartedAt}}' "$(service_container api)")" != "$api_started" ] ||
  die "compose restart api did not restart the API container"
wait_ready "after restarting the API"
check_voiceprints "after restarting the API"

phase restart-redis "compose restart redis: the append-only file on the volume"
redis_run_id() { compose exec -T redis redis-cli info server | tr -d '\r' | sed -n 's/^run_id://p'; }
run_id=$(redis_run_id)
[ -n "$run_id" ] || die "no run_id from redis-cli info server"
compose restart redis
[ "$(redis_run_id)" != "$run_id" ] || die "compose restart redis did not restart the Redis server"
# The API may take a moment to see that its Redis went away and came back.
deadline=$((SECONDS + 60))
until [ "$(authed GET /speakers/spk1688)" = 200 ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 1; done
wait_ready "after restarting Redis"
check_voiceprints "after restarting Redis"

phase stop "compose stop: each ends by itself (SIGTERM, exit status 0) within its grace period"
# One service at a time, the API first, as Docker Compose stops them (podman-compose 1.6 stops all at once).
for service in api redis; do
  stop_start=$EPOCHREALTIME
  compose stop "$service" >/dev/null
  container=$(service_container "$service")
  expect "$service stopped in $(seconds_since "$stop_start") s: exit status" 0 \
    "$(engine inspect --format '{{.State.ExitCode}}' "$container")"
done

phase down "compose down -v: nothing left"
compose down -v
DOWN_DONE=1
left="$(project_containers)$(project_volumes)$(project_networks)"
[ -z "$left" ] || die "left after compose down -v: $left"
say "ok: no container, volume or network of $PROJECT left"
