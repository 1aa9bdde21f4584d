"""Helpers of the MLCube tests (test_mlcube.py, test_container.py): scratch folders mlcube can take, the mlcube
executable, and stand-ins for docker/podman/singularity that record every command line they are given.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Appends its argv to $EMD_FAKE_STATE/calls.jsonl, then either runs the real tool (REAL set; its argv and wall
# seconds go to seconds.jsonl) or plays it:
# docker/podman: `inspect`/`image exists` fail until `build -t IMAGE` ran; `run` exits with $EMD_FAKE_RC when
# its arguments hold $EMD_FAKE_FAIL_TASK, else 0. singularity (or apptainer): `--version` answers like singularity 3.11,
# `build` creates the SIF (its second-to-last argument), taking $EMD_FAKE_BUILD_SECONDS (default 0) to do so.
_TOOL = r"""#!{python}
import json, os, subprocess, sys, time
from pathlib import Path
REAL = {real!r}
state = Path(os.environ["EMD_FAKE_STATE"])
name, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps([name] + args) + "\n")
if REAL:
    start = time.monotonic()
    rc = subprocess.call([REAL] + args)
    with open(state / "seconds.jsonl", "a") as f:
        f.write(json.dumps([name] + args + [round(time.monotonic() - start, 1)]) + "\n")
    sys.exit(rc)
def marker(image):
    return state / ("image-" + image.replace("/", "_").replace(":", "_"))
if name in ("singularity", "apptainer"):
    if args[:1] == ["--version"]:
        print("singularity version 3.11.4")
    elif args[:1] == ["build"]:
        time.sleep(float(os.environ.get("EMD_FAKE_BUILD_SECONDS", "0")))
        Path(args[-2]).write_bytes(b"fake sif")
    sys.exit(0)
if args[:1] == ["inspect"] or args[:2] == ["image", "exists"]:
    sys.exit(0 if marker(args[-1]).exists() else 1)
if args[:1] == ["build"]:
    marker(args[args.index("-t") + 1]).touch()
if args[:1] == ["run"] and os.environ.get("EMD_FAKE_FAIL_TASK") in args:
    sys.exit(int(os.environ.get("EMD_FAKE_RC", "3")))
sys.exit(0)
"""


def scratch_dir(prefix: str) -> Path:
    """A new folder under /tmp whose path has no letter 'h': mlcube 0.0.9 prints its help instead of running
    when a -P value holds one (mlcube issue #347), and pytest's tmp_path holds the test's name."""
    parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    if "h" in parent:
        pytest.fail(f"no temporary folder without an 'h' in its path ({parent})")
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        if "h" not in str(path):
            return path
        path.rmdir()


def find_mlcube() -> Path:
    """The mlcube 0.0.9 executable of the test environment; a test FAILS (no skip) when there is none."""
    for candidate in (Path(sys.executable).parent / "mlcube", ROOT / ".venv" / "bin" / "mlcube"):
        if candidate.is_file():
            return candidate
    found = shutil.which("mlcube")
    if not found:
        pytest.fail("mlcube 0.0.9 is not installed in the test environment: run `bash run/install-mlcube.sh`")
    return Path(found)


def write_tool(bin_dir: Path, name: str, real: str | None = None) -> Path:
    """Put a recording ``name`` in ``bin_dir``: a fake, or a wrapper that runs ``real`` and times it."""
    path = bin_dir / name
    path.write_text(_TOOL.replace("{python}", sys.executable).replace("{real!r}", repr(real)))
    path.chmod(0o755)
    return path


def read_calls(state: Path, tool: str | None = None) -> list[list[str]]:
    """The recorded command lines (without the tool's name), in order, of one tool or of all."""
    path = state / "calls.jsonl"
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c[1:] for c in calls if tool is None or c[0] == tool]
