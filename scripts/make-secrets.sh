#!/usr/bin/env bash
# The secrets a deployment needs, made once with random values and never written into the repository:
# the Redis password (Redis starts with it; the API reads it from a file) and the voiceprint key (the
# key-encryption key of voiceprints at rest, docs/security.md).
#
#   scripts/make-secrets.sh compose
#       Files for docker-compose.yml's secrets: redis_password and voiceprint_key in VOXGATE_SECRETS_DIR
#       (default ./secrets, which git ignores): the folder readable by you only, the files by the
#       containers' users (Compose mounts each file at /run/secrets/NAME).
#   scripts/make-secrets.sh kubernetes [--dry-run] [KUBECTL OPTIONS, e.g. --namespace NAME]
#       The Secrets deploy/ refers to: voxgate-redis (key password; the in-cluster Redis of overlays dev
#       and cpu) and voxgate-voiceprint-key (key voiceprint-key), created with kubectl. --dry-run prints
#       them instead (no cluster needed).
#
# A secret that exists is kept, never replaced: a new voiceprint key would leave every stored voiceprint
# unreadable (rotate it with `voxgate reencrypt`, docs/security.md), a new Redis password would lock the
# service out of its Redis. Values: 32 random bytes as 64 hex digits (safe in a URL and a command line).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "make-secrets: $*" >&2; }
die() { say "$*"; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

compose() {
  [ $# -eq 0 ] || die "compose takes no options (the folder is VOXGATE_SECRETS_DIR)"
  local dir=${VOXGATE_SECRETS_DIR:-./secrets} name
  mkdir -p "$dir"
  chmod 700 "$dir"
  for name in redis_password voiceprint_key; do
    if [ -s "$dir/$name" ]; then
      say "kept $dir/$name"
      continue
    fi
    (umask 022 && random_hex > "$dir/$name.new" && echo >> "$dir/$name.new")
    mv "$dir/$name.new" "$dir/$name"
    say "made $dir/$name"
  done
}

kubernetes() {
  local dry="" kubectl_args=()
  for arg in "$@"; do
    if [ "$arg" = --dry-run ]; then dry=1; else kubectl_args+=("$arg"); fi
  done
  local kubectl
  kubectl=$(command -v kubectl || true)
  [ -n "$kubectl" ] || die "kubectl not found"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  local name key
  for pair in voxgate-redis:password voxgate-voiceprint-key:voiceprint-key; do
    name=${pair%%:*}
    key=${pair#*:}
    if [ -z "$dry" ] && "$kubectl" "${kubectl_args[@]}" get secret "$name" >/dev/null 2>&1; then
      say "kept Secret $name"
      continue
    fi
    # From a file, not a literal: the value never appears on a command line.
    (umask 077 && random_hex > "$WORK/$key")
    if [ -n "$dry" ]; then
      echo "---"
      "$kubectl" "${kubectl_args[@]}" create secret generic "$name" --from-file="$key=$WORK/$key" \
        --dry-run=client -o yaml
    else
      "$kubectl" "${kubectl_args[@]}" create secret generic "$name" --from-file="$key=$WORK/$key" >/dev/null
      say "made Secret $name"
    fi
  done
}

case ${1:-} in
  compose) shift; compose "$@" ;;
  kubernetes) shift; kubernetes "$@" ;;
  *) usage ;;
esac
