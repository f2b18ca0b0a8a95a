#!/usr/bin/env bash
# Build the preloader image locally with podman (no Docker engine needed).
#
#   scripts/build-image.sh [TAG]        # default TAG: localhost/model-cache:dev
#
# Steps (each skipped when already done, so the script is idempotent):
#   1. apt-get install podman runc debootstrap        (if any is missing)
#   2. /etc/containers/containers.conf default_ulimits (the sandbox cannot raise rlimits)
#   3. localhost/python-base from debootstrap bookworm  (no registry is reachable)
#   4. docker/wheelhouse/: wheels for the base image's Python, fetched on the
#      host (inside a build, registries answer only through a TLS proxy)
#   5. podman --runtime runc build --build-arg BASE_IMAGE=... -t TAG .
# and prints the image size and build time.
#
# Env: BASE_IMAGE (default localhost/python-base; set it to a real image such
#      as python:3.12-slim-bookworm where a registry is reachable, and set
#      SKIP_BASE=1), PYTHON (host python with pip; default .venv/bin/python),
#      DEBIAN_MIRROR (default: the first URI in the apt sources).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

tag="${1:-localhost/model-cache:dev}"
base_image="${BASE_IMAGE:-localhost/python-base}"
python="${PYTHON:-$repo_root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
wheelhouse="$repo_root/docker/wheelhouse"
podman=(podman --runtime runc)

log() { echo "build-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# 1. Tools.
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
if [[ "$base_image" == localhost/python-base ]] && ! command -v debootstrap >/dev/null 2>&1; then
  missing+=(debootstrap)
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Container ulimits (podman's defaults try to raise nofile/nproc, which the
#    sandbox refuses).
conf=/etc/containers/containers.conf
if ! grep -qs '^[[:space:]]*default_ulimits' "$conf"; then
  log "writing default_ulimits to $conf"
  as_root mkdir -p /etc/containers
  if grep -qs '^\[containers\]' "$conf"; then
    as_root sed -i '/^\[containers\]/a default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]' "$conf"
  else
    printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n' \
      | as_root tee -a "$conf" >/dev/null
  fi
fi

# 3. Local base image (once).
if [[ "$base_image" == localhost/python-base && -z "${SKIP_BASE:-}" ]] \
   && ! "${podman[@]}" image exists localhost/python-base; then
  mirror="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$(mktemp -d /var/tmp/python-base.XXXXXX)"
  trap 'as_root rm -rf "$rootfs"' EXIT
  log "debootstrap bookworm from $mirror (about a minute)"
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
  # Trim what a runtime image never needs.
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  as_root tar -C "$rootfs" -c . | "${podman[@]}" import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - localhost/python-base >/dev/null
  as_root rm -rf "$rootfs"
  trap - EXIT
  log "imported localhost/python-base"
fi

# 4. Wheelhouse for the base image's Python (tags must match it, not the host).
py_info="$("${podman[@]}" run --rm --network none "$base_image" python3 -c \
  'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
log "base image $base_image has Python $py_info"
rm -f "$wheelhouse"/*.whl
mapfile -t deps < <("$python" -c '
import sys, tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
"$python" -m pip download --quiet --dest "$wheelhouse" --only-binary=:all: \
  --implementation cp --python-version "$py_info" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  "${deps[@]}" wheel 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
log "wheelhouse: $(ls "$wheelhouse"/*.whl | wc -l) wheels"

# 5. Build.
start=$(date +%s)
"${podman[@]}" build --build-arg "BASE_IMAGE=$base_image" -t "$tag" .
elapsed=$(( $(date +%s) - start ))

size=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
log "built $tag in ${elapsed}s"
printf 'image %s size %s bytes (%s MB)\n' "$tag" "$size" "$(( size / 1000000 ))"
