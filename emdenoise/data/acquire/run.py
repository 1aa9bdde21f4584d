"""The download engine: fill ``raw_data_dir`` from a :class:`~emdenoise.data.acquire.sources.Source` and record it in
``MANIFEST.json`` (:mod:`emdenoise.data.acquire.manifest`).

Every object under an S3 prefix is mirrored (train/, test/, inference/ ...), at its path relative to the
prefix. Downloads go to ``<file>.part`` and are moved into place only when every file of the run is complete
and verified, so a failed run never touches what is already in ``raw_data_dir``. A second run checks what is
there against ``MANIFEST.json`` (size and sha256) and downloads nothing when it all matches. Archives are
extracted into a private folder inside ``raw_data_dir`` (``.extract-XXXXXXXX``) and moved into place only once
the whole archive has been extracted and found to hold the layout. The layout may sit one or more folders deep
in a zip, a local folder or under an S3 prefix (``emdenoise_minibatch_v1/train/...``): the shallowest folder
holding ``train/`` and ``test/`` becomes the root. After a successful run, the files the previous MANIFEST.json
listed and the new one does not (another source's ``inference/`` folder, say) are removed; files no manifest
listed are left alone.

The end of every run is one :class:`~emdenoise.outputs.Transaction`: the new files are moved onto their names,
then the stale files are removed, then ``MANIFEST.json`` is written, last. A run killed in between leaves the
old manifest, which no longer matches: the next run checks the files again and finishes the job.

:func:`download` takes no lock of its own: its caller holds the folder lock of ``raw_data_dir``
(:func:`emdenoise.lock.hold`; the CLI takes it for every task).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from emdenoise.config.params import DownloadParams
from emdenoise.data.acquire import manifest as mf
from emdenoise.data.acquire.archive import extract_zip
from emdenoise.data.acquire.fetch import NotFound, Unreachable
from emdenoise.data.acquire.job import (
    ABTEM_CHUNKS,
    EXTRACT_PREFIX,
    DownloadJob,
    bar_bytes,
    key_to_relpath,
    mib,
    reserved,
)
from emdenoise.data.acquire.remote import RemoteObject, file_digests, is_md5_etag, part_path
from emdenoise.data.acquire.sources import Source
from emdenoise.data.prepare.raw import check_raw_layout, find_layout_root
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.layout import MANIFEST
from emdenoise.outputs import sha256_file

if TYPE_CHECKING:  # the generator (numpy, scipy, h5py) is imported only when it runs
    from emdenoise.data.simulate.writer import GeneratorSettings


def download(source: Source, params: DownloadParams, raw_dir: Path, log) -> None:
    """Fill ``raw_dir`` (which must exist, locked by the caller) from ``source`` and write its MANIFEST.json.

    Raises one-line :class:`InputError` / :class:`RuntimeFailure`; on any failure the files at their final
    names in ``raw_dir`` are as they were (finished ``.part`` files stay for the next run to resume).
    """
    for stale in raw_dir.glob(EXTRACT_PREFIX + "*"):  # left by a run that was killed while extracting
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by an interrupted extraction", stale)
    job = Download(source, params, raw_dir, log, mf.read_manifest(raw_dir, log))
    handler = {
        "synthetic": job.from_synthetic,
        "abtem": job.from_abtem,
        "s3": job.from_s3,
        "zip_url": job.from_zip,
        "zip_file": job.from_zip,
        "folder": job.from_folder,
    }[source.kind]
    try:
        handler()
    except Unreachable as exc:
        if source.kind not in ("s3", "zip_url") or not job.old_copy_is_complete():
            raise
        log.warning("%s", exc.message)
        log.warning(
            "using the copy already in %s: it matches %s (downloaded %s)",
            raw_dir,
            MANIFEST,
            (job.old or {}).get("created"),
        )
    check_raw_layout(raw_dir, micrographs=source.micrographs)


class Download(DownloadJob):
    """One run, with a method per kind of source."""

    # -- the sources ---------------------------------------------------------------------------------------------
    def from_synthetic(self) -> None:
        try:
            from emdenoise.data.simulate import writer
        except ImportError as exc:
            raise RuntimeFailure(f"the synthetic generator cannot be loaded ({exc})") from None
        settings = writer.GeneratorSettings.from_section(self.params)
        self.generate(settings, {**settings.record(), "generator_version": writer.GENERATOR_VERSION})

    def from_abtem(self) -> None:
        """abTEM's multislice images of the generator's specimens (:mod:`emdenoise.data.simulate.abtem_source`): the
        settings are checked before anything is made; finished chunks are kept in ``.abtem-chunks/`` until the
        run's files are committed, so an interrupted run resumes."""
        from emdenoise.data.simulate import abtem_source, writer

        extra = abtem_source.settings(self.params, "parameters")
        settings = writer.GeneratorSettings.from_section(
            self.params, renderer="abtem", structure=extra["structure"], oversampling=extra["abtem_oversampling"]
        )
        generator = {**settings.record(), **extra, "generator_version": writer.GENERATOR_VERSION}
        key = hashlib.sha256(json.dumps(generator, sort_keys=True).encode()).hexdigest()[:16]
        resume_dir = self.raw_dir / ABTEM_CHUNKS / key
        for other in (self.raw_dir / ABTEM_CHUNKS).glob("*"):  # chunks of other settings are of no use
            if other.name != key and other.is_dir() and not other.is_symlink():
                shutil.rmtree(other, ignore_errors=True)
        self.generate(settings, generator, resume_dir)
        shutil.rmtree(self.raw_dir / ABTEM_CHUNKS, ignore_errors=True)

    def generate(self, settings: GeneratorSettings, generator: dict, resume_dir: Path | None = None) -> None:
        """Write the generator's files (:func:`emdenoise.data.simulate.writer.write_dataset`) and the manifest
        that records ``generator``; nothing to do when the manifest already records it and the files match."""
        from emdenoise.data.simulate import writer

        if (
            self.old is not None
            and self.old.get("kind") == self.source.kind
            and self.old.get("generator") == generator
            and self.verified(self.old["files"])
        ):
            self.nothing_to_do("generate")
            return
        with self.transaction() as tx:
            workers = self.params.workers
            written = writer.write_dataset(
                self.raw_dir, settings, resume_dir=resume_dir, workers=workers, log=self.log, tx=tx
            )
            files = []
            for path in written:
                staged = tx.staged_path(path)
                files.append(
                    {
                        "path": path.relative_to(self.raw_dir).as_posix(),
                        "size": staged.stat().st_size,
                        "sha256": sha256_file(staged),
                    }
                )
            manifest = mf.build(self.source, files, generator=generator)
            self.done("generated", len(files), manifest["total_bytes"])
            self.finish(tx, manifest)

    def from_s3(self) -> None:
        src = self.source
        listing = f"{src.endpoint}/{src.bucket}?list-type=2&prefix={src.prefix}"
        with self.client() as client:
            objects, pages = client.list_objects(src.endpoint, src.bucket, src.prefix, self.params.page_size)
            self.log.info(
                "listed %d objects under s3://%s/%s at %s (%d page%s)",
                len(objects),
                src.bucket,
                src.prefix,
                src.endpoint,
                pages,
                "s" if pages != 1 else "",
            )
            plan = self._plan(objects, listing)
            todo, files = self._check_present(plan)
            if not todo:
                self.nothing_to_do("download", mf.build(src, files))
                return
            for _, obj in todo:
                self.log.debug("to download: %s (%d bytes)", obj.key, obj.size)
            parts = {rel: part_path(self.raw_dir / rel) for rel, _ in todo}
            have = sum(p.stat().st_size for p in parts.values() if p.is_file())
            need = sum(obj.size for _, obj in todo)
            self.disk_check(need - have)
            self.log.info(
                "downloading %d of %d files (%s)%s",
                len(todo),
                len(plan),
                mib(need),
                f", resuming {mib(have)} already in .part files" if have else "",
            )
            fetched = []
            with bar_bytes(need, "download") as bar:
                for rel, obj in todo:
                    url = f"{src.endpoint}/{quote(src.bucket, safe='')}/{quote(obj.key, safe='/~')}"
                    try:
                        fetched.append((rel, obj, client.download(url, parts[rel], obj.size, obj.etag, bar)))
                    except NotFound:
                        raise RuntimeFailure(
                            f"{url}: listed but not found (HTTP 404): the bucket changed during "
                            f"the download; run download again"
                        ) from None
        # Every file is complete and verified: only now do they replace anything in raw_data_dir.
        with self.transaction() as tx:
            for rel, obj, got in fetched:
                self.place(tx, got.part, rel)
                files.append(
                    {
                        "path": rel,
                        "key": obj.key,
                        "size": got.size,
                        "etag": obj.etag,
                        "md5": got.md5,
                        "sha256": got.sha256,
                    }
                )
            self.done("downloaded", len(fetched), need - have)
            self.finish(tx, mf.build(src, files))

    def _plan(self, objects: list[RemoteObject], listing: str) -> dict[str, RemoteObject]:
        """Local path -> object, for the objects of the listing inside the layout's root folder."""
        plan = {}
        for obj in objects:
            rel = key_to_relpath(self.source.prefix, obj.key, listing)
            if rel is None:
                continue
            if reserved(rel):
                self.log.warning("skipping %s: the name is reserved for the download's own files", obj.key)
                continue
            plan[rel] = obj
        if not plan:
            raise InputError(
                f"{listing}: the listing is empty: no objects under this prefix; check "
                f"download.source (a download that fetches nothing is an error, not a success)"
            )
        root = find_layout_root(plan, listing)
        if root:
            outside = [rel for rel in plan if not rel.startswith(root)]
            self.log.info(
                "the layout is under %s%s; mirroring that folder%s",
                self.source.prefix,
                root,
                f" ({len(outside)} objects outside it skipped)" if outside else "",
            )
            plan = {rel[len(root) :]: obj for rel, obj in plan.items() if rel.startswith(root)}
        return plan

    def _check_present(self, plan: dict[str, RemoteObject]) -> tuple[list[tuple[str, RemoteObject]], list[dict]]:
        """Split the plan into objects to fetch and manifest entries of files already here and intact.

        A local file counts as intact when its size matches and either its sha256 matches the manifest entry
        recorded for the same ETag, or (no such entry) its MD5 matches a single-part ETag: a copy made by
        other tools is adopted without downloading it again.
        """
        old = mf.entries(self.old)

        def known(rel, obj) -> dict | None:
            entry = old.get(rel)
            return entry if entry and entry.get("etag") == obj.etag and entry.get("size") == obj.size else None

        candidates = {
            rel
            for rel, obj in plan.items()
            if (self.raw_dir / rel).is_file()
            and (self.raw_dir / rel).stat().st_size == obj.size
            and (known(rel, obj) or is_md5_etag(obj.etag))
        }
        todo, files = [], []
        with bar_bytes(sum(plan[r].size for r in candidates), "verify", disable=not candidates) as bar:
            for rel, obj in plan.items():
                if rel in candidates:
                    entry = known(rel, obj)
                    md5, sha = file_digests(self.raw_dir / rel, bar, md5=entry is None)
                    if entry is not None and entry["sha256"] == sha:
                        md5 = entry.get("md5")
                    if (entry is not None and entry["sha256"] == sha) or (entry is None and md5 == obj.etag):
                        files.append(
                            {"path": rel, "key": obj.key, "size": obj.size, "etag": obj.etag, "md5": md5, "sha256": sha}
                        )
                        continue
                todo.append((rel, obj))
        return todo, files

    def from_zip(self) -> None:
        src = self.source
        if src.kind == "zip_url":
            with self.client() as client:
                size, etag = client.probe(src.url)
                archive = {"size": size, "etag": etag}
                if (size is not None or etag is not None) and self._old_archive_matches(archive):
                    self.nothing_to_do("download")
                    return
                name = Path(urlsplit(src.url).path).name or "archive.zip"
                part = part_path(self.raw_dir / "".join(c if c.isalnum() or c in "._-" else "_" for c in name))
                with bar_bytes(size, "download") as bar:
                    got = client.download(src.url, part, size, etag, bar)
            archive = {"size": got.size, "etag": got.etag, "sha256": got.sha256}
            self._extract(part, src.url, archive)
            part.unlink(missing_ok=True)
        else:
            path = src.local_path
            size = path.stat().st_size
            with bar_bytes(size, "verify") as bar:
                archive = {"size": size, "sha256": file_digests(path, bar, md5=False)[1]}
            if self._old_archive_matches(archive):
                self.nothing_to_do("extract")
                return
            self._extract(path, str(path), archive)

    def _old_archive_matches(self, archive: dict) -> bool:
        old_archive = (self.old or {}).get("archive") or {}
        return all(old_archive.get(k) == v for k, v in archive.items()) and self.old_copy_is_complete()

    def _extract(self, zip_path: Path, where: str, archive: dict) -> None:
        staging = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX, dir=self.raw_dir))
        try:
            try:
                extracted = extract_zip(zip_path, staging, self.params.max_archive_bytes)
                plan = self.plan_paths([f.path for f in extracted], where)
            except InputError:
                if zip_path.name.endswith(".part"):
                    zip_path.unlink(missing_ok=True)  # a bad archive is not worth resuming
                raise
            with self.transaction() as tx:
                files: list[dict[str, Any]] = []
                members = {item.path: item for item in extracted}
                for rel, member in sorted(plan.items()):
                    item = members[member]
                    if reserved(rel):
                        continue
                    self.place(tx, staging / item.path, rel)
                    files.append({"path": rel, "member": item.path, "size": item.size, "sha256": item.sha256})
                self.done("extracted", len(files), sum(f["size"] for f in files))
                self.finish(tx, mf.build(self.source, files, archive=archive))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def from_folder(self) -> None:
        src_dir = self.source.local_path
        raw = self.raw_dir.resolve()
        found = []
        for dirpath, dirnames, filenames in os.walk(src_dir):
            here = Path(dirpath)
            # raw_data_dir inside the source folder: do not copy it into itself.
            dirnames[:] = sorted(d for d in dirnames if raw == src_dir or (here / d).resolve() != raw)
            for name in sorted(filenames):
                rel = (here / name).relative_to(src_dir).as_posix()
                if (here / name).is_file() and not reserved(rel):
                    found.append(rel)
        plan = {dest: src_dir / rel for dest, rel in self.plan_paths(found, src_dir).items()}
        in_place = not self.source.micrographs and (src_dir / find_layout_root(found, src_dir)).resolve() == raw
        todo: list[tuple[str, Path, dict[str, Any]]] = []
        files: list[dict[str, Any]] = []
        total = sum(p.stat().st_size for p in plan.values())
        with bar_bytes(total, "verify") as bar:
            for rel, path in sorted(plan.items()):
                size = path.stat().st_size
                sha = file_digests(path, bar, md5=False)[1]
                dest = self.raw_dir / rel
                entry: dict[str, Any] = {"path": rel, "size": size, "sha256": sha}
                if in_place or (dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha):
                    files.append(entry)
                else:
                    todo.append((rel, path, entry))
        if not todo:
            if in_place:
                self.log.info("the source is raw_data_dir itself: its %d files are recorded as they are", len(files))
            self.nothing_to_do("copy", mf.build(self.source, files))
            return
        need = sum(e["size"] for _, _, e in todo)
        self.disk_check(need)
        copied = []
        try:
            with bar_bytes(need, "copy") as bar:
                for rel, path, entry in todo:
                    part = part_path(self.raw_dir / rel)
                    _copy_verified(path, part, entry["sha256"], bar)
                    copied.append((part, rel, entry))
        except BaseException:
            for part, _, _ in copied:
                part.unlink(missing_ok=True)
            raise
        with self.transaction() as tx:
            for part, rel, entry in copied:
                self.place(tx, part, rel)
                files.append(entry)
            self.done("copied", len(copied), need)
            self.finish(tx, mf.build(self.source, files))


def _copy_verified(src: Path, part: Path, sha256: str, bar) -> None:
    """Copy ``src`` to ``part``, checking the copy's sha256 against the one computed when planning."""
    part.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise RuntimeFailure(f"{exc.filename or part}: cannot copy ({exc.strerror or exc})") from None
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise RuntimeFailure(f"{src}: changed while it was being copied; run download again")
