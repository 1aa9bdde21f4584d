#!/usr/bin/env bash
# Run the whole task chain (download, preprocess, train, test) through MLCube on one platform:
#
#   run/mlcube.sh PLATFORM [PARAMETERS_FILE] [WORKSPACE] [-- EXTRA MLCUBE ARGS...]
#
# PLATFORM: docker-cpu, docker-gpu, podman-cpu, podman-gpu or singularity (the files in platforms/, which this
# script registers in the mlcube system settings file, $MLCUBE_SYSTEM_SETTINGS or ~/mlcube.yaml, so that plain
# `mlcube run --platform=NAME` works afterwards too).
# PARAMETERS_FILE: default parameters/quickstart.parameters.yaml (synthetic data, CPU-sized): a path relative to
# the workspace, any existing file, or one of the repository's workspace/parameters. WORKSPACE: default ./workspace.
# TASKS=download,preprocess selects tasks (default: all four, in order; the chain stops at the first failure,
# with that task's exit code). MLCUBE: the mlcube executable (default .venv/bin/mlcube, else mlcube on PATH).
# MLCUBE_LOG_LEVEL=info shows the exact container commands mlcube runs. EMDENOISE_REVISION / EMDENOISE_CREATED
# override the image's revision and created labels (default: the git commit, now).
#
# podman: uses .cache/containers/containers.conf and the local base image localhost/emdenoise-base when
# run/container-deps.sh made them (offline build); docker: that base image too, when the daemon has it. singularity: builds workspace/.image/emdenoise-0.1.0.sif
# once from workspace/.image/emdenoise-0.1.0.tar ($EMDENOISE_IMAGE_TAR), which must exist.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -e/{/^set -e/d;p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac

platform="$1"; shift
params="parameters/quickstart.parameters.yaml"
workspace="$root/workspace"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then params="$1"; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then workspace="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
extra=("$@")

if [ ! -f "$root/platforms/$platform.yaml" ]; then
    known=""
    for file in "$root"/platforms/*.yaml; do known+=" $(basename "$file" .yaml)"; done
    echo "run/mlcube.sh: unknown platform '$platform': expected one of$known" >&2
    exit 2
fi
mkdir -p "$workspace"
workspace="$(cd "$workspace" && pwd)"
# The parameters file: relative to the workspace (as mlcube resolves it), else an existing path from here, else
# one of the repository's workspace/parameters (for a workspace elsewhere); the last two are passed absolute.
if [ ! -f "$workspace/$params" ]; then
    if [ -f "$params" ]; then
        params="$(cd "$(dirname "$params")" && pwd)/$(basename "$params")"
    elif [ -f "$root/workspace/$params" ]; then
        params="$root/workspace/$params"
    else
        echo "run/mlcube.sh: parameters file not found: $params (nor $workspace/$params)" >&2
        exit 2
    fi
fi
# mlcube 0.0.9 prints its help and exits 0 when a -P value holds a lowercase 'h' (mlcube issue #347).
for arg in "${extra[@]}"; do
    case "$arg" in -P*h*|-p*h*)
        echo "run/mlcube.sh: '$arg': mlcube 0.0.9 cannot take an 'h' in a -P argument (it would print its help" \
             "and run nothing); set it in mlcube.yaml or through the environment variables it reads" >&2
        exit 2 ;;
    esac
done

mlcube="${MLCUBE:-}"
if [ -z "$mlcube" ]; then
    if [ -x "$root/.venv/bin/mlcube" ]; then mlcube="$root/.venv/bin/mlcube"; else mlcube="$(command -v mlcube || true)"; fi
fi
[ -n "$mlcube" ] || { echo "run/mlcube.sh: no mlcube; install it: bash run/install-mlcube.sh" >&2; exit 2; }

# Register platforms/*.yaml in the system settings file, with the python that runs mlcube (it has omegaconf):
# the interpreter of the mlcube script's #! line.
settings="$("$mlcube" config 2>/dev/null | sed -n 's/^System settings file path = //p')"
read -r -a python <<<"$(sed -n '1s/^#!//p' "$(command -v "$mlcube")")"
"${python[@]}" - "$settings" "$root"/platforms/*.yaml <<'EOF'
import os, sys
from pathlib import Path
from omegaconf import OmegaConf
settings_file, files = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
settings = OmegaConf.load(settings_file) if settings_file.is_file() else OmegaConf.create({})
platforms = settings.get("platforms") or OmegaConf.create({})
for file in files:
    entry = OmegaConf.load(file)
    # Complete the entry with the runner's default platform (mlcube writes one per runner, named after it), so
    # that mlcube does not warn about missing keys.
    platforms[file.stem] = OmegaConf.merge(platforms.get(entry.runner) or {}, entry)
settings["platforms"] = platforms
tmp = settings_file.with_name(settings_file.name + ".tmp")
OmegaConf.save(settings, tmp)
os.replace(tmp, settings_file)
EOF

case "$platform" in
    podman-*)
        conf="$root/.cache/containers/containers.conf"
        if [ -z "${CONTAINERS_CONF:-}" ] && [ -f "$conf" ]; then export CONTAINERS_CONF="$conf"; fi
        if [ -z "${EMDENOISE_BASE_IMAGE:-}" ] && podman image exists localhost/emdenoise-base 2>/dev/null; then
            export EMDENOISE_BASE_IMAGE=localhost/emdenoise-base
        fi ;;
    docker-*)
        if [ -z "${EMDENOISE_BASE_IMAGE:-}" ] \
                && docker inspect --type=image localhost/emdenoise-base >/dev/null 2>&1; then
            export EMDENOISE_BASE_IMAGE=localhost/emdenoise-base
        fi ;;
    singularity)
        tar="${EMDENOISE_IMAGE_TAR:-$workspace/.image/emdenoise-0.1.0.tar}"
        if [ ! -f "$workspace/.image/emdenoise-0.1.0.sif" ] && [ ! -f "$tar" ]; then
            echo "run/mlcube.sh: no $tar to build the SIF from; on a machine with podman or docker:" >&2
            echo "  podman save --format docker-archive -o $tar emdenoise:0.1.0" >&2
            exit 2
        fi ;;
esac

# The image's OCI labels: the commit it is built from ("-dirty" with uncommitted changes) and when. mlcube passes
# them as build arguments (mlcube.yaml) when it builds the image, i.e. only when the image is missing.
if [ -z "${EMDENOISE_REVISION:-}" ] && revision="$(git -C "$root" rev-parse HEAD 2>/dev/null)"; then
    git -C "$root" diff --quiet HEAD -- 2>/dev/null || revision+="-dirty"
    export EMDENOISE_REVISION="$revision"
fi
export EMDENOISE_CREATED="${EMDENOISE_CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"

echo "mlcube: $mlcube, platform $platform, workspace $workspace, parameters $params" >&2
tasks="${TASKS:-download,preprocess,train,test}"
start=$(date +%s)
"$mlcube" ${MLCUBE_LOG_LEVEL:+--log-level="$MLCUBE_LOG_LEVEL"} run --mlcube="$root" --platform="$platform" \
    --task="$tasks" --workspace="$workspace" "${extra[@]}" parameters_file="$params"
echo "mlcube: $tasks done in $(( $(date +%s) - start )) s; outputs in $workspace: data/, models/, output/, logs/" >&2
