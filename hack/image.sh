#!/usr/bin/env bash
# Builds Patron's container image from the Dockerfile with buildah (no daemon), as docs/install.md
# describes. See docs/install.md "The image".
#
#   hack/image.sh build     build IMAGE (default localhost/patron:<chart appVersion>); print its name
#   hack/image.sh base      only make sure a base image exists (pulled, or built with debootstrap)
#   hack/image.sh name      print IMAGE
#
# The Dockerfile's base is the official slim Python image (its ARG PYTHON_IMAGE). Where that cannot
# be pulled (no access to image registries), a local base of the same shape is built once from
# Debian's packages with debootstrap (python3, venv, pip; the machine's CA bundle copied in, which
# pip inside the build needs) and passed as --build-arg PYTHON_IMAGE=$LOCAL_BASE.
#
# Environment: PATRON_IMAGE (the tag), PATRON_IMAGE_BASE=official|local (default: official when it
# can be pulled), PATRON_DEBIAN_MIRROR (default http://deb.debian.org/debian). Needs root and the
# Debian packages buildah, podman and debootstrap (installed when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/patron/Chart.yaml")
IMAGE=${PATRON_IMAGE:-localhost/patron:$APP_VERSION}
OFFICIAL_BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/Dockerfile")
SUITE=bookworm  # Debian 12: Python 3.11, as the official base's
LOCAL_BASE=localhost/patron-python-base:$SUITE
MIRROR=${PATRON_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "image: $*" >&2; }
die() { log "error: $*"; exit 1; }
elapsed() { echo $((SECONDS - $1)); }

need() { # BINARY PACKAGE
  command -v "$1" >/dev/null && return 0
  log "$1 is missing: installing Debian package $2"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

has_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A base of the official image's shape from Debian's packages: minbase + python3, venv, pip (the
# build stage runs `pip wheel` and `python -m venv`) and passwd (groupadd/useradd). Package caches,
# lists, docs and man pages are dropped.
build_local_base() {
  local dir start=$SECONDS
  need debootstrap debootstrap
  dir=$(mktemp -d "${TMPDIR:-/tmp}/patron-base.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" RETURN
  log "building $LOCAL_BASE with debootstrap ($SUITE, $MIRROR)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,passwd \
    "$SUITE" "$dir/root" "$MIRROR" >"$dir/debootstrap.log" 2>&1 ||
    { tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap failed"; }
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$dir/root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$dir/root"/var/cache/apt/archives/*.deb "$dir/root"/var/lib/apt/lists/* \
    "$dir/root"/usr/share/doc/* "$dir/root"/usr/share/man/* "$dir/root"/usr/share/info/*
  tar -C "$dir/root" -c . | podman import --quiet - "$LOCAL_BASE" >/dev/null
  log "built $LOCAL_BASE in $(elapsed "$start") s"
}

# The base to build on: the official one when it is present or can be pulled, else the local one.
cmd_base() {
  need buildah buildah
  need podman podman
  if [ "${PATRON_IMAGE_BASE:-}" != local ]; then
    if has_image "$OFFICIAL_BASE" || timeout 60 buildah pull --quiet "docker.io/library/$OFFICIAL_BASE" >/dev/null 2>&1; then
      BASE=$OFFICIAL_BASE
      return 0
    fi
    [ "${PATRON_IMAGE_BASE:-}" != official ] || die "cannot pull $OFFICIAL_BASE"
    log "cannot pull $OFFICIAL_BASE (no access to the registry): using a local base"
  fi
  has_image "$LOCAL_BASE" || build_local_base
  BASE=$LOCAL_BASE
}

cmd_build() {
  local start=$SECONDS args=() old
  cmd_base
  [ "$BASE" = "$OFFICIAL_BASE" ] || args=(--build-arg "PYTHON_IMAGE=$BASE")
  old=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null || true)
  log "building $IMAGE from the Dockerfile on $BASE"
  buildah bud --isolation chroot --layers=false --quiet "${args[@]}" -t "$IMAGE" "$ROOT" >/dev/null
  # The previous build of this tag, now untagged, is dropped (unless a container still uses it).
  if [ -n "$old" ] && [ "$old" != "$(buildah images --quiet --no-trunc "$IMAGE")" ]; then
    buildah rmi "$old" >/dev/null 2>&1 || true
  fi
  log "built $IMAGE in $(elapsed "$start") s ($(buildah images --format '{{.Size}}' "$IMAGE"))"
  echo "$IMAGE"
}

case "${1:-}" in
  build) cmd_build ;;
  base) cmd_base && echo "$BASE" ;;
  name) echo "$IMAGE" ;;
  *) echo "usage: $0 build | base | name" >&2; exit 2 ;;
esac
