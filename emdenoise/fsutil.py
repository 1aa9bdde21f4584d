"""Atomic file writing: write to a temporary name in the same folder, then rename into place.

A crash at any moment leaves either the old good file or the new good file, never a partial one.

Tasks whose run writes many files over a long time (train, denoise) keep their finished new files in a hidden
staging folder, :data:`STAGING_DIR`, inside the output folder, where a rerun after a crash finds them, and
move them into place with :func:`promote` only when the whole run has succeeded: a failed run leaves the
files at the final names as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

STAGING_DIR = ".staging"

# mkstemp creates files readable by their owner only; give finished files the usual mode instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync and rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is left as it was; an OSError that names no file
    (a write on a full disk) or the temporary one is raised again naming ``dest``.
    ``suffix`` defaults to dest's own suffix so libraries that look at the extension still work.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=(dest.suffix if suffix is None else suffix) + ".tmp",
                               dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(dest)) from exc
        raise


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def json_text(obj) -> str:
    """``obj`` as the JSON text every output file of emdenoise holds (indented, no NaN or infinity)."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json_atomic(dest: str | os.PathLike, obj) -> None:
    write_text_atomic(dest, json_text(obj))


def promote(staged: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename the finished file ``staged`` (in a staging folder of the same output folder, hence on the same
    file system) onto ``dest``: one atomic step, ``dest`` is the old file or the new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)


def remove_staging(folder: str | os.PathLike) -> None:
    """Delete the staging folder ``folder`` and whatever is left in it (nothing when it does not exist)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


@contextlib.contextmanager
def staging(folder: str | os.PathLike) -> Iterator[Path]:
    """The staging folder ``folder`` for the ``with`` block, which moves what it wants into place at its end.

    On success the folder is removed with whatever is left in it (files of another, abandoned job). On failure
    the finished files stay for the next run, and only the folders left empty are removed.
    """
    folder = Path(folder)
    try:
        yield folder
    except BaseException:
        for dirpath, _, _ in os.walk(folder, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        raise
    remove_staging(folder)
