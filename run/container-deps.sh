#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to build and run the emdenoise image with podman and with docker, offline-friendly.
#
#   bash run/container-deps.sh                 # everything below, skipping what is already done
#   bash run/container-deps.sh --stop-docker   # stop the Docker daemon this script started, if it still runs
#
# 1. apt-get installs podman, runc and debootstrap when they are missing, and the Docker engine (docker.io) when
#    there is no dockerd and no Docker daemon answers (needs root, or sudo).
# 2. Writes a containers.conf (runc runtime, explicit ulimits) to $EMDENOISE_CONTAINERS_CONF
#    (default .cache/containers/containers.conf); export CONTAINERS_CONF to it before calling podman or mlcube
#    (run/mlcube.sh and the container tests do this themselves).
# 3. Docker daemon: one that answers (`docker version`, through DOCKER_HOST if set) is used as it is, and never
#    stopped. When none answers, and only as root with DOCKER_HOST unset, starts dockerd in the background on the
#    default socket (/var/run/docker.sock), as systemd would on a usual install, with what our build machines
#    allow: no bridge network and no iptables rules (--bridge=none: containers get no network; the build and the
#    synthetic chain need none), data in /var/lib/docker ($EMDENOISE_DOCKER_DATA_ROOT to move it), the storage
#    driver dockerd picks itself (overlay2 where the kernel allows; $EMDENOISE_DOCKER_STORAGE_DRIVER=vfs forces
#    one). Log: .cache/docker/dockerd.log; its pid goes to .cache/docker/dockerd.pid, which --stop-docker reads.
#    Not root and no daemon: says so and leaves docker out.
# 4. Builds the base image $EMDENOISE_BASE_IMAGE (default localhost/emdenoise-base) for podman and docker when
#    they lack it, without any registry: a root file system made by debootstrap (Debian bookworm minbase + python3
#    + python3-venv), kept as .cache/containers/emdenoise-base-rootfs.tar and imported into each engine
#    (`podman import`, `docker import`), so both get the same base.
# 5. Fills wheels/ (in the build context) with `pip download -r requirements.txt` (plus setuptools, which builds
#    the package), so that the image builds with no network at all (the Dockerfile installs from wheels/ when it
#    holds wheels). The wheels are for linux x86_64 and CPython 3.11 only: an image for another architecture
#    (aarch64) needs wheels downloaded for it, or an empty wheels/ (from the index).
#
# Every step is cached: a second run takes a few seconds. Set EMDENOISE_SKIP_APT=1, EMDENOISE_SKIP_DOCKER=1,
# EMDENOISE_SKIP_BASE=1 or EMDENOISE_SKIP_WHEELS=1 to leave a step out. Variables: DEBIAN_MIRROR (default
# http://deb.debian.org/debian), DEBIAN_SUITE (default bookworm), PIP (default: .venv/bin/python -m pip, else
# python3 -m pip).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
conf="${EMDENOISE_CONTAINERS_CONF:-$repo/.cache/containers/containers.conf}"
base_image="${EMDENOISE_BASE_IMAGE:-localhost/emdenoise-base}"
base_tar="$repo/.cache/containers/emdenoise-base-rootfs.tar"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
wheels="$repo/wheels"
docker_dir="$repo/.cache/docker"
docker_pidfile="$docker_dir/dockerd.pid"

say() { printf 'container-deps: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
docker_answers() { command -v docker >/dev/null 2>&1 && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
# A live process (not a zombie) with the given pid and command name.
running() { [ -r "/proc/$1/stat" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
    && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }

case "${1:-}" in
    "") ;;
    --stop-docker)
        if [ ! -f "$docker_pidfile" ]; then
            say "no Docker daemon started by run/container-deps.sh to stop"
            exit 0
        fi
        pid="$(cat "$docker_pidfile")"
        if running "$pid" dockerd; then
            kill -TERM "$pid"
            for _ in $(seq 120); do running "$pid" dockerd || break; sleep 0.5; done
            if running "$pid" dockerd; then say "dockerd (pid $pid) did not stop within 60 s"; exit 1; fi
            say "stopped dockerd (pid $pid), which run/container-deps.sh had started"
        else
            say "dockerd (pid $pid), started by run/container-deps.sh, is no longer running"
        fi
        rm -f "$docker_pidfile"
        exit 0 ;;
    *) echo "usage: bash run/container-deps.sh [--stop-docker]" >&2; exit 2 ;;
esac

use_docker=0
[ "${EMDENOISE_SKIP_DOCKER:-0}" = 1 ] || use_docker=1

# 1. Packages -------------------------------------------------------------------------------------------
if [ "${EMDENOISE_SKIP_APT:-0}" != 1 ]; then
    missing=()
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    # The Docker engine (daemon, containerd, and a docker CLI) only where no daemon answers: a docker CLI talking
    # to a remote daemon (DOCKER_HOST) or to Docker Desktop needs no engine here.
    if [ "$use_docker" = 1 ] && { ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; } \
            && ! docker_answers; then
        missing+=(docker.io)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]} with apt-get"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" uidmap slirp4netns fuse-overlayfs >/dev/null
    else
        say "podman, runc, debootstrap$([ "$use_docker" = 1 ] && echo ' and docker') are installed"
    fi
fi

# 2. containers.conf ------------------------------------------------------------------------------------
# crun fails on some hosts (rlimits, hybrid cgroups); runc with explicit ulimits works everywhere we tried.
mkdir -p "$(dirname "$conf")"
cat >"$conf.tmp" <<'CONF'
# Written by run/container-deps.sh (emdenoise). Use with: export CONTAINERS_CONF=<this file>
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF="$conf"
say "containers.conf: $conf (export CONTAINERS_CONF=$conf)"

# 3. Docker daemon --------------------------------------------------------------------------------------
if [ "$use_docker" = 1 ]; then
    if docker_answers; then
        say "a Docker daemon answers (server $(docker version --format '{{.Server.Version}}'), storage" \
            "$(docker info --format '{{.Driver}}' 2>/dev/null)): using it as it is"
    elif [ "$(id -u)" -ne 0 ] || [ -n "${DOCKER_HOST:-}" ] || ! command -v dockerd >/dev/null 2>&1; then
        say "no Docker daemon answers${DOCKER_HOST:+ at DOCKER_HOST=$DOCKER_HOST}, and this script starts one only" \
            "as root, with dockerd installed and DOCKER_HOST unset: docker left out (start the daemon, e.g." \
            "\`sudo systemctl start docker\`, and run this again; EMDENOISE_SKIP_DOCKER=1 silences this)"
        use_docker=0
    else
        mkdir -p "$docker_dir"
        log="$docker_dir/dockerd.log"
        args=(--iptables=false --ip6tables=false --bridge=none)
        [ -n "${EMDENOISE_DOCKER_DATA_ROOT:-}" ] && args+=(--data-root="$EMDENOISE_DOCKER_DATA_ROOT")
        [ -n "${EMDENOISE_DOCKER_STORAGE_DRIVER:-}" ] && args+=(--storage-driver="$EMDENOISE_DOCKER_STORAGE_DRIVER")
        say "no Docker daemon answers: starting dockerd ${args[*]} (log: $log)"
        # Detached from this script: its own session, no terminal, every descriptor away from our caller's pipes.
        setsid dockerd "${args[@]}" >>"$log" 2>&1 </dev/null &
        launched=$!
        for _ in $(seq 120); do
            docker_answers && break
            running "$launched" dockerd || break
            sleep 0.5
        done
        if ! docker_answers; then
            say "dockerd did not come up; the end of $log:"
            tail -n 20 "$log" >&2
            kill -TERM "$launched" 2>/dev/null || true
            exit 1
        fi
        # dockerd's own pid file (setsid may have forked once more than $! shows).
        pid="$(cat /var/run/docker.pid 2>/dev/null || echo "$launched")"
        echo "$pid" >"$docker_pidfile"
        say "started dockerd (pid $pid, server $(docker version --format '{{.Server.Version}}'), storage" \
            "$(docker info --format '{{.Driver}}'), data $(docker info --format '{{.DockerRootDir}}'), no network" \
            "for containers); stop it with: bash run/container-deps.sh --stop-docker"
    fi
fi

# 4. Base image -----------------------------------------------------------------------------------------
if [ "${EMDENOISE_SKIP_BASE:-0}" != 1 ]; then
    lacking=()
    if command -v podman >/dev/null 2>&1; then
        if podman image exists "$base_image"; then say "podman: base image $base_image is there"; else lacking+=(podman); fi
    fi
    if [ "$use_docker" = 1 ]; then
        if docker image inspect "$base_image" >/dev/null 2>&1; then
            say "docker: base image $base_image is there"
        else
            lacking+=(docker)
        fi
    fi
    if [ "${#lacking[@]}" -gt 0 ] && [ ! -s "$base_tar" ]; then
        say "building the base root file system with debootstrap ($suite, $mirror)"
        start=$(date +%s)
        rootfs="$(mktemp -d "${TMPDIR:-/tmp}/emdenoise-rootfs.XXXXXX")"
        trap 'as_root rm -rf "$rootfs"' EXIT
        as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
        rm -f "$rootfs.log"
        # Keep the image small: package caches and lists are not needed at run time.
        as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        mkdir -p "$(dirname "$base_tar")"
        as_root tar -C "$rootfs" -c . >"$base_tar.tmp"
        mv "$base_tar.tmp" "$base_tar"
        as_root rm -rf "$rootfs"
        trap - EXIT
        say "base root file system $base_tar built in $(( $(date +%s) - start )) s ($(du -h "$base_tar" | cut -f1))"
    fi
    for engine in "${lacking[@]}"; do
        quiet=(); [ "$engine" = podman ] && quiet=(--quiet)   # docker import has no --quiet, and says less
        "$engine" import "${quiet[@]}" --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$base_image" \
            <"$base_tar" >/dev/null
        say "$engine: base image $base_image imported from $base_tar"
    done
fi

# 5. Wheels for an offline build ------------------------------------------------------------------------
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
