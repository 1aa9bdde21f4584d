"""One run at a time per output folder: an exclusive lock on ``<folder>/.emdenoise.lock``.

The CLI takes the lock on every output folder of a task (except ``log_dir``, where appending is harmless)
before the task starts, and gives it back when the task ends, however it ends. A second run that would write
into a locked folder stops at once with :class:`~emdenoise.errors.BusyError` (exit code 3), naming the folder
and, as recorded in the lock file, the task, process id and host of the run holding it.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the lock file: the kernel drops it when its process dies, so a
lock file left behind by ``kill -9`` or a power cut blocks nothing. The holder deletes the file when it is
done, while still holding the lock; a run that opened the file just before that notices it was deleted and
tries again, so two runs never both believe they hold the lock. On a file system without flock (Lustre
mounted without ``flock``, NFS without a lock daemon) the run goes on unlocked, with a warning.

While it holds a folder, a run also removes the temporary files that :func:`emdenoise.outputs.atomic_path`
writers of an earlier, killed run left behind (``.<name>.<8 random characters><suffix>.tmp``), skipping
subfolders that carry a lock file of their own (another run's folder).

A folder that does not exist is created (parents too) and removed again at the end if it is still empty, so
a run that fails early leaves the file system as it found it. A path that cannot be a folder (a file is in
the way) or a folder nobody may write into (read-only mount, no permission) is refused with a one-line
:class:`~emdenoise.errors.InputError` before the task does any work.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import types
from collections.abc import Iterator
from pathlib import Path

from emdenoise.errors import BusyError, InputError
from emdenoise.outputs import is_temporary

fcntl: types.ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

LOCK_NAME = ".emdenoise.lock"


def _one_line(exc: OSError) -> str:
    return exc.strerror or " ".join(str(exc).split()) or exc.__class__.__name__


def _make_folder(folder: Path, what: str) -> list[Path]:
    """Create ``folder`` and missing parents; return the folders created, deepest first."""
    created = []
    for path in [folder, *folder.parents]:
        if path.is_dir():
            break
        if path.exists() or path.is_symlink():
            raise InputError.at(path, what, "expected an output folder, found a file (or a broken link) in the way")
        created.append(path)
    for path in reversed(created):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise InputError.at(path, what, "expected an output folder, found a file in the way") from None
        except OSError as exc:
            raise InputError.at(folder, what, f"cannot create the output folder ({_one_line(exc)})") from None
    return created


def read_holder(folder: Path) -> dict:
    """What the lock file of ``folder`` says about its holder ({} when unreadable or empty)."""
    try:
        data = json.loads((folder / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy(folder: Path, what: str) -> BusyError:
    holder = read_holder(folder)
    who = ", ".join(f"{key} {holder[key]}" for key in ("task", "pid", "host", "since") if holder.get(key))
    return BusyError(
        f"{folder}: {what}: another emdenoise run is writing into this folder"
        f"{f' ({who})' if who else ''}; wait for it to finish, or use another folder"
    )


def _acquire(folder: Path, what: str, task: str, log=None) -> int | None:
    """Lock ``folder``; return the lock file's descriptor (None on a file system without locks)."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise InputError.at(
                    folder,
                    what,
                    f"expected a writable output folder, got one that cannot be written into ({_one_line(exc)})",
                ) from None
            raise InputError.at(path, what, f"cannot create the lock file ({_one_line(exc)})") from None
        assert fcntl is not None  # hold() does not lock without it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, what) from None
        except OSError as exc:  # e.g. Lustre mounted without flock: ENOSYS; old NFS without lockd: ENOLCK
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # a lock file nobody can lock tells nobody anything
            if log is not None:
                log.warning(
                    "%s: this file system does not support locks (%s): running without the lock; do not "
                    "start a second run writing into this folder",
                    folder,
                    _one_line(exc),
                )
            return None
        # The previous holder deletes the file on release: if it did so after we opened it, our lock is on a
        # file nobody else will ever look at. Start again with the file now at that name.
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    holder = {
        "task": task,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:  # who holds it is a courtesy for the error message of a second run: a full disk must not stop us
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    except OSError:
        pass
    return fd


def _release(folder: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(folder / LOCK_NAME)  # still holding the lock: see _acquire
    os.close(fd)


def sweep_temporaries(folder: Path, log=None) -> list[Path]:
    """Remove what atomic writers of a killed run left in ``folder`` (which this run must hold locked)."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        # a subfolder with a lock file of its own belongs to another run (or to another folder of this one)
        dirnames[:] = [d for d in dirnames if not (here / d / LOCK_NAME).exists()]
        for name in filenames:
            if not is_temporary(name):
                continue
            path = here / name
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
    if removed and log is not None:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


@contextlib.contextmanager
def hold(folders: dict[str, Path], task: str, log=None) -> Iterator[None]:
    """Lock every folder of ``folders`` (argument name -> path) for the duration of the ``with`` block.

    Raises :class:`BusyError` when another run holds one of them (none is then kept locked) and
    :class:`InputError` when one cannot be a writable folder.
    """
    if fcntl is None:
        yield
        return
    held: list[tuple[Path, int | None]] = []
    created: list[Path] = []
    seen: set[Path] = set()  # resolved paths: one lock per folder, whatever it is called
    try:
        for what, folder in folders.items():
            folder = Path(folder)
            created += _make_folder(folder, what)
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            held.append((folder, _acquire(folder, what, task, log)))
        for folder, _ in held:
            sweep_temporaries(folder, log)
        yield
    finally:
        for folder, fd in reversed(held):
            _release(folder, fd)
        for path in created:  # deepest first; only folders that are still empty
            with contextlib.suppress(OSError):
                path.rmdir()
