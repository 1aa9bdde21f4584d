"""What every download source shares (:class:`DownloadJob`): the run's parameters and the manifest found,
verification against it, the one :class:`~emdenoise.outputs.Transaction` that ends a run (new files placed,
stale ones removed, ``MANIFEST.json`` last), and the rule for where a remote key may land. The sources
themselves are in :mod:`emdenoise.data.acquire.run`."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emdenoise.config.params import DownloadParams
from emdenoise.data.acquire import manifest as mf
from emdenoise.data.acquire.fetch import HttpClient
from emdenoise.data.acquire.remote import file_digests
from emdenoise.data.acquire.sources import Source
from emdenoise.data.prepare.raw import find_layout_root, micrograph_plan
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.layout import MANIFEST
from emdenoise.lock import LOCK_NAME
from emdenoise.log import progress
from emdenoise.outputs import STAGING_DIR, Transaction

EXTRACT_PREFIX = ".extract-"
ABTEM_CHUNKS = ".abtem-chunks"  # the finished chunks of an interrupted abtem run (removed once it succeeds)


def key_to_relpath(prefix: str, key: str, where: str) -> str | None:
    """The local path (posix, relative to raw_data_dir) of an object; None for a folder marker.

    A key that would land outside raw_data_dir (absolute, ``..``, empty parts, backslashes) is refused.
    """
    if not key.startswith(prefix):
        raise RuntimeFailure(f"{where}: the listing returned key {key!r}, which is not under the prefix {prefix!r}")
    rel = key[len(prefix) :]
    if rel == "":
        return None
    marker = rel.endswith("/")
    parts = rel[:-1].split("/") if marker else rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"{where}: key {key!r}: refused: its local path would land outside raw_data_dir "
            f"(absolute, empty or '..' parts)"
        )
    return None if marker else rel


def reserved(rel: str) -> bool:
    """Names the download itself uses inside raw_data_dir (never mirrored, copied or extracted onto)."""
    parts = rel.split("/")
    return (
        rel in (MANIFEST, LOCK_NAME)
        or rel.endswith(".part")
        or parts[0].startswith(EXTRACT_PREFIX)
        or parts[0] == ABTEM_CHUNKS
        or STAGING_DIR in parts
    )


@dataclass
class DownloadJob:
    """One run: the source, the parameters, the folder, and the manifest found there."""

    source: Source
    params: DownloadParams
    raw_dir: Path
    log: Any
    old: dict | None
    started: float = field(default_factory=time.monotonic)
    stale: list[Path] = field(default_factory=list)  # what the run's transaction removes ...
    written: dict | None = None  # ... and the manifest it writes

    # -- helpers shared by the sources ---------------------------------------------------------------------------
    def client(self) -> HttpClient:
        return HttpClient(self.params.retries, self.params.timeout, self.log)

    def verified(self, entries: Iterable[dict]) -> bool:
        """True when every entry's file is in raw_data_dir with its recorded size and sha256."""
        entries = list(entries)
        if not entries:
            return False
        for entry in entries:
            path = self.raw_dir / entry["path"]
            if not path.is_file() or path.stat().st_size != entry.get("size"):
                return False
        with bar_bytes(sum(e["size"] for e in entries), "verify") as bar:
            return all(file_digests(self.raw_dir / e["path"], bar, md5=False)[1] == e["sha256"] for e in entries)

    def old_copy_is_complete(self) -> bool:
        """The manifest describes this very source and its files are all there, intact."""
        return mf.describes(self.old, self.source) and self.verified((self.old or {})["files"])

    def nothing_to_do(self, what: str, new: dict | None = None) -> None:
        files = (new or self.old or {})["files"]
        self.log.info(
            "nothing to %s: all %d files (%s) in %s are present and match %s",
            what,
            len(files),
            mib(sum(e["size"] for e in files)),
            self.raw_dir,
            MANIFEST,
        )
        if new is not None and not mf.same(self.old, new):
            with self.transaction() as tx:
                self.finish(tx, new)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A :class:`Transaction` committed when the block succeeds (aborted otherwise: what it staged is
        removed). After the commit, the folders the removed stale files leave empty go too."""
        tx = Transaction()
        self.stale, self.written = [], None
        with tx:
            yield tx
        for path in self.stale:
            for folder in path.parents:
                if folder == self.raw_dir:
                    break
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
        if self.written is not None:
            self.log.info(
                "wrote %s (%d files, %s)",
                self.raw_dir / MANIFEST,
                self.written["file_count"],
                mib(self.written["total_bytes"]),
            )
        if self.stale:
            self.log.info(
                "removed %d file%s of the previous download (%s) that the new one does not have",
                len(self.stale),
                "s" if len(self.stale) != 1 else "",
                (self.old or {}).get("source"),
            )

    def place(self, tx: Transaction, src: Path, rel: str) -> None:
        """Stage the complete, verified file ``src`` (on raw_data_dir's file system) for ``raw_data_dir/rel``."""
        try:
            os.replace(src, tx.put(self.raw_dir / rel))
        except OSError as exc:
            raise RuntimeFailure(
                f"{self.raw_dir / rel}: cannot move the new file into place ({exc.strerror or exc})"
            ) from None

    def finish(self, tx: Transaction, manifest: dict) -> None:
        """Declare the end of a successful run in ``tx`` (one of :meth:`transaction`): the removal of the files
        the previous manifest listed and ``manifest`` does not, then ``manifest`` as MANIFEST.json, last."""
        self.stale = self.stale_files(manifest)
        for path in self.stale:
            tx.remove(path)
        tx.write_json(self.raw_dir / MANIFEST, manifest)
        self.written = manifest

    def stale_files(self, manifest: dict) -> list[Path]:
        """The files the previous manifest listed and ``manifest`` does not, that are really inside raw_data_dir:
        after a switch of source nothing of the old one (an ``inference/`` folder, say) is left for preprocess
        to pick up. Files no manifest listed are never touched."""
        keep = set(mf.entries(manifest))
        raw = self.raw_dir.resolve()
        found = []
        for rel in sorted(set(mf.entries(self.old)) - keep):
            path = self.raw_dir / rel
            # read_manifest admits only relative paths without '..'; a symlinked folder could still lead out
            if not path.is_symlink() and path.is_file() and raw in path.resolve().parents:
                found.append(path)
        return found

    def done(self, verb: str, count: int, nbytes: int) -> None:
        seconds = max(time.monotonic() - self.started, 1e-6)
        self.log.info(
            "%s %d files (%s) in %.1f s (%.1f MiB/s)", verb, count, mib(nbytes), seconds, nbytes / 2**20 / seconds
        )

    def disk_check(self, need: int) -> None:
        free = shutil.disk_usage(self.raw_dir).free
        if need > free:
            raise RuntimeFailure(f"{self.raw_dir}: not enough disk space: {mib(need)} to write, {mib(free)} free")

    def plan_paths(self, found: Iterable[str], where: Any) -> dict[str, str]:
        """{path in raw_data_dir: path in the source} of what to take from a folder or an archive: the layout
        under its root, or (a micrographs: source) every micrograph file, under ``micrographs/``."""
        if self.source.micrographs:
            return micrograph_plan(found, where)
        root = find_layout_root(found, where)
        return {rel[len(root) :]: rel for rel in found if rel.startswith(root)}


def bar_bytes(total: int | None, desc: str, disable: bool = False):
    """A progress bar in bytes."""
    return progress(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=disable)


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
