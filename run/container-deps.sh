#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to build and run the emdenoise image with podman, offline-friendly.
#
#   bash run/container-deps.sh            # everything below, skipping what is already done
#
# 1. apt-get installs podman, runc and debootstrap when they are missing (needs root).
# 2. Writes a containers.conf (runc runtime, explicit ulimits) to $EMDENOISE_CONTAINERS_CONF
#    (default .cache/containers/containers.conf); export CONTAINERS_CONF to it before calling podman or mlcube
#    (run/mlcube.sh and the container tests do this themselves).
# 3. Builds the base image $EMDENOISE_BASE_IMAGE (default localhost/emdenoise-base) with debootstrap when it is
#    not there yet: Debian bookworm minbase + python3 + python3-venv, so no registry is needed.
# 4. Fills wheels/ (in the build context) with `pip download -r requirements.txt` (plus setuptools, which builds
#    the package), so that the image builds with no network at all (the Dockerfile installs from wheels/ when it
#    holds wheels). The wheels are for linux x86_64 and CPython 3.11 only: an image for another architecture
#    (aarch64) needs wheels downloaded for it, or an empty wheels/ (from the index).
#
# Every step is cached: a second run takes a few seconds. Set EMDENOISE_SKIP_APT=1, EMDENOISE_SKIP_BASE=1 or
# EMDENOISE_SKIP_WHEELS=1 to leave a step out. Variables: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DEBIAN_SUITE (default bookworm), PIP (default: .venv/bin/python -m pip, else python3 -m pip).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
conf="${EMDENOISE_CONTAINERS_CONF:-$repo/.cache/containers/containers.conf}"
base_image="${EMDENOISE_BASE_IMAGE:-localhost/emdenoise-base}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
wheels="$repo/wheels"

say() { printf 'container-deps: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Packages -------------------------------------------------------------------------------------------
if [ "${EMDENOISE_SKIP_APT:-0}" != 1 ]; then
    missing=()
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]} with apt-get"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" uidmap slirp4netns fuse-overlayfs >/dev/null
    else
        say "podman, runc and debootstrap are installed"
    fi
fi

# 2. containers.conf ------------------------------------------------------------------------------------
# crun fails on some hosts (rlimits, hybrid cgroups); runc with explicit ulimits works everywhere we tried.
mkdir -p "$(dirname "$conf")"
cat >"$conf.tmp" <<'EOF'
# Written by run/container-deps.sh (emdenoise). Use with: export CONTAINERS_CONF=<this file>
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF="$conf"
say "containers.conf: $conf (export CONTAINERS_CONF=$conf)"

# 3. Base image -----------------------------------------------------------------------------------------
if [ "${EMDENOISE_SKIP_BASE:-0}" != 1 ]; then
    if podman image exists "$base_image"; then
        say "base image $base_image is there"
    else
        say "building $base_image with debootstrap ($suite, $mirror)"
        start=$(date +%s)
        rootfs="$(mktemp -d "${TMPDIR:-/tmp}/emdenoise-rootfs.XXXXXX")"
        trap 'as_root rm -rf "$rootfs"' EXIT
        as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
        rm -f "$rootfs.log"
        # Keep the image small: package caches and lists are not needed at run time.
        as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        as_root tar -C "$rootfs" -c . | podman import --quiet \
            --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$base_image" >/dev/null
        as_root rm -rf "$rootfs"
        trap - EXIT
        say "base image $base_image built in $(( $(date +%s) - start )) s"
    fi
fi

# 4. Wheels for an offline build ------------------------------------------------------------------------
if [ "${EMDENOISE_SKIP_WHEELS:-0}" != 1 ]; then
    stamp="$wheels/.requirements.sha256"
    # builds the package inside the image (no `wheel` needed from 70.1 on); the Dockerfile pins the same version
    extra="setuptools==84.2.1"
    want="$({ cat "$repo/requirements.txt"; echo "$extra"; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "wheels/ is up to date with requirements.txt"
    else
        say "downloading wheels for requirements.txt into wheels/"
        mkdir -p "$wheels"
        pip="${PIP:-}"
        if [ -z "$pip" ]; then
            if [ -x "$repo/.venv/bin/python" ]; then pip="$repo/.venv/bin/python -m pip"; else pip="python3 -m pip"; fi
        fi
        # The image's Python is CPython 3.11 on x86_64 with glibc >= 2.36 (bookworm, python:3.11-slim): ask for
        # exactly those wheels, whatever Python runs pip here. pip does not widen a manylinux tag to older
        # glibc versions by itself, so every compatible tag is listed.
        platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
        for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
        $pip download -qq --dest "$wheels" --only-binary=:all: \
            --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
            -r "$repo/requirements.txt" "$extra"
        echo "$want" >"$stamp"
        say "wheels/: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
    fi
fi
