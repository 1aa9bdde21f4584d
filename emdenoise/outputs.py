"""The one way emdenoise commits its outputs.

- :func:`atomic_path`: one file, written to a temporary name in the same folder, then renamed into place: a
  crash at any moment leaves either the old good file or the new good file, never a partial one.
- :class:`Transaction`: the outputs of a whole run. New files are written into hidden staging folders
  (:data:`STAGING_DIR`, beside each destination) and moved onto their names, in the order the task declared,
  only when the run has succeeded: a failed run leaves the files at the final names as they were. A
  resumable transaction (train, denoise) keeps its finished staged files when it fails, where the same
  command finds them again and goes on.
- :func:`check_output`: an output file or folder checked before any work (the parent can be created, no file
  stands in the way, the nearest existing folder is writable): one line naming the path, exit 2, nothing written.
- :data:`TEMPORARY_NAMES`: every temporary name these write; the lock's sweeper (:mod:`emdenoise.lock`)
  removes what a killed run left under them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emdenoise.errors import InputError

STAGING_DIR = ".staging"
# The names of temporary files: atomic_path's "." + name + "." + mkstemp's 8 characters + suffix + ".tmp"
# (the suffix repeats the name's own, so a user's file that merely ends in .tmp is never taken for one).
_ATOMIC_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>.*)\.tmp$")


def is_temporary(name: str) -> bool:
    """Whether a file called ``name`` is a temporary file of :func:`atomic_path` (a killed run's leftover)."""
    found = _ATOMIC_TEMP.match(name)
    return found is not None and found["suffix"] == Path(found["name"]).suffix


# Every temporary name emdenoise writes, and who cleans it up (the lock's sweeper uses is_temporary):
TEMPORARY_NAMES = {
    ".<name>.XXXXXXXX<suffix>.tmp": "atomic_path: removed by the sweeper when a run takes the folder's lock",
    STAGING_DIR + "/": "Transaction: committed or removed by the next run of the same task (resumable ones "
    "keep finished files)",
    "<file>.part": "download: resumed by the next download (emdenoise.data.acquire.fetch)",
    ".extract-XXXXXXXX/": "download: a zip being extracted (in raw_data_dir); removed by the next download",
    ".abtem-chunks/": "download (abtem): finished chunks of an interrupted run, reused by the next one with the "
    "same settings, removed once a run succeeds",
}

# mkstemp creates files readable by their owner only; give finished files the usual mode instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def check_output(path: str | os.PathLike, field: str, kind: str = "folder") -> None:
    """Raise a one-line :class:`InputError` naming ``path`` and ``field`` (``output_dir``, ``--output``) unless
    the output ``path`` (``kind``: ``folder`` or ``file``) can be written: no file where a folder is expected
    (there or above it), no folder where a file is expected, and the nearest existing folder is writable.
    Nothing is created."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError.at(path, field, "expected an output folder, found a file of that name")
    if kind == "file" and path.is_dir():
        raise InputError.at(path, field, "expected a file name, found a folder")
    existing = path if kind == "folder" and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError.at(path, field, f"cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "not writable"
        raise InputError.at(path, field, f"cannot be written: expected a writable output folder, {existing} is {why}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync and rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is left as it was; an OSError that names no file
    (a write on a full disk) or the temporary one is raised again naming ``dest``.
    ``suffix`` defaults to dest's own suffix so libraries that look at the extension still work.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=(dest.suffix if suffix is None else suffix) + ".tmp", dir=dest.parent
    )
    os.close(fd)
    tmp = Path(name)
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Step:
    kind: str  # "put" (staged -> dest) or "remove" (dest)
    dest: Path
    staged: Path | None = None


class Transaction:
    """The new outputs of one run, committed together in a declared order.

    ``put(dest)`` returns the staged path of ``dest`` (``dest.parent/.staging/dest.name``, on the same file
    system) to write the new file into (normally through :func:`atomic_path`, or use :meth:`writing`) and
    appends "move it onto ``dest``" to the plan; ``remove(dest)`` appends "delete ``dest``" (an old file the
    new outputs replace or make stale, e.g. a sidecar that must go before its image is replaced). The order
    of the calls is the order of the commit: the file that marks the whole output complete (a dataset card,
    a metrics file) is declared last.

    Used as a context manager, the block's success commits and an exception aborts. ``resumable=True``: an
    abort keeps the finished staged files (a rerun finds them with :meth:`is_staged` and declares them again
    with :meth:`put`) and removes only staging folders left empty; otherwise it removes them all.
    """

    def __init__(self, resumable: bool = False):
        self.resumable = resumable
        self._steps: list[_Step] = []
        self._stages: dict[Path, None] = {}  # staging folders used, in order

    @staticmethod
    def staged_path(dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        return dest.parent / STAGING_DIR / dest.name

    def is_staged(self, dest: str | os.PathLike) -> bool:
        """Whether a finished staged file for ``dest`` is there (written by this run or a failed earlier one)."""
        return self.staged_path(dest).is_file()

    def put(self, dest: str | os.PathLike) -> Path:
        """Declare ``dest`` a new output; return where to write it."""
        staged = self.staged_path(dest)
        staged.parent.mkdir(parents=True, exist_ok=True)
        self._stages[staged.parent] = None
        self._steps.append(_Step("put", Path(dest), staged))
        return staged

    @contextlib.contextmanager
    def writing(self, dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
        """``atomic_path`` onto the staged file of ``dest`` (declared with :meth:`put`)."""
        with atomic_path(self.put(dest), suffix) as tmp:
            yield tmp

    def write_text(self, dest: str | os.PathLike, text: str) -> None:
        with self.writing(dest) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def write_json(self, dest: str | os.PathLike, obj: Any) -> None:
        self.write_text(dest, json_text(obj))

    def remove(self, dest: str | os.PathLike) -> None:
        """Declare that ``dest`` is deleted at this point of the commit (nothing happens if it is absent)."""
        self._steps.append(_Step("remove", Path(dest)))

    def commit(self) -> None:
        """Carry out the plan: each put moves its staged file onto its name (one atomic rename each), each
        remove deletes; then the staging folders go. A put whose staged file is missing is a bug: an error
        before anything moves."""
        missing = [s.staged for s in self._steps if s.kind == "put" and not s.staged.is_file()]  # type: ignore[union-attr]
        if missing:
            raise FileNotFoundError(f"staged output missing: {missing[0]}")
        for step in self._steps:
            if step.kind == "put":
                step.dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(step.staged, step.dest)  # type: ignore[arg-type]
            else:
                with contextlib.suppress(FileNotFoundError):
                    step.dest.unlink()
        for folder in self._stages:
            remove_staging(folder)
        self._steps.clear()

    def abort(self) -> None:
        """Give up: staged files are removed (resumable: only the empty staging folders)."""
        for folder in self._stages:
            if not self.resumable:
                remove_staging(folder)
                continue
            for dirpath, _, _ in os.walk(folder, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        self._steps.clear()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:  # a commit that failed part-way (disk full, killed): what was not moved is
            self.abort()  # given up like a failed run's (kept when resumable)
            raise
