#!/usr/bin/env bash
# Install the MLCube 0.0.9 command line (mlcube, with its docker and singularity runners) into a virtualenv.
#
#   bash run/install-mlcube.sh [VENV]      # default VENV: .venv (created with python3 -m venv if missing)
#
# mlcube 0.0.9 pins omegaconf 2.1.0, whose metadata pip 24.1 and newer reject (mlcube issue #360), so the three
# mlcube packages are installed with --no-deps and their dependencies are listed here by hand. Python 3.12+
# also needs setuptools (mlcube imports distutils). Safe to run again: it does nothing when mlcube 0.0.9 is
# already there.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    echo "install-mlcube: creating $venv" >&2
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

if "$py" -c 'import importlib.metadata as m, sys; sys.exit(any(m.version(p) != "0.0.9" for p in
              ("mlcube", "mlcube-docker", "mlcube-singularity")))' 2>/dev/null && [ -x "$venv/bin/mlcube" ]; then
    echo "install-mlcube: mlcube 0.0.9 is already in $venv" >&2
    exit 0
fi

echo "install-mlcube: installing mlcube 0.0.9 into $venv" >&2
"$py" -m pip install -qq --no-deps mlcube==0.0.9 mlcube-docker==0.0.9 mlcube-singularity==0.0.9
"$py" -m pip install -qq "omegaconf==2.1.1" "click>=8,<9" "coloredlogs==14.0" markdown "spython==0.2.1" "semver>=2.13,<4" setuptools
"$venv/bin/mlcube" --help >/dev/null
echo "install-mlcube: $("$venv/bin/mlcube" --version 2>/dev/null || echo 'mlcube 0.0.9') ready: $venv/bin/mlcube" >&2
