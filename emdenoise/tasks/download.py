"""The ``download`` task: fill ``raw_data_dir`` with em_graphene_sim (or the synthetic stand-in) and a MANIFEST.

``download.source`` selects where the data come from:

- ``synthetic``: the embedded generator (:mod:`emdenoise.data.synthetic`), no network;
- ``stfc`` / ``osn``: the public S3-compatible stores (bucket ``sciml-datasets``, prefix ``ms/em_graphene_sim/``);
- ``minibatch``: the small zip of the old MLCube example;
- ``https://host/bucket/prefix`` (path-style S3), ``s3://bucket/prefix`` (with ``download.endpoint``), or any
  ``https://.../*.zip`` (plain ``http://`` only to this machine, see :func:`emdenoise.data.fetch.https_required`);
- a local folder or ``.zip`` holding the layout.

Every object under an S3 prefix is mirrored (train/, test/, inference/ ...), at its path relative to the
prefix. Downloads go to ``<file>.part`` and are renamed into place only when every file of the run is complete
and verified, so a failed run never touches what is already in ``raw_data_dir``. A second run checks what is
there against ``MANIFEST.json`` (size and sha256) and downloads nothing when it all matches. Archives are
extracted into a private folder inside ``raw_data_dir`` and moved into place only once the whole archive has
been extracted and found to hold the layout. The layout may sit one or more folders deep in a zip, a local
folder or under an S3 prefix (``emdenoise_minibatch_v1/train/...``): the shallowest folder holding ``train/``
and ``test/`` becomes the root. After a successful run, the files the previous MANIFEST.json listed and the new
one does not (another source's ``inference/`` folder, say) are removed; files no manifest listed are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, unquote, urlsplit

from emdenoise import __version__
from emdenoise.data.archive import extract_zip
from emdenoise.data.sources import MINIBATCH_URL, S3_SOURCES
from emdenoise.errors import BusyError, InputError, RuntimeFailure
from emdenoise.data.fetch import (HTTPS_REQUIRED, HttpClient, NotFound, Unreachable, file_digests, https_required,
                             is_md5_etag, part_path)
from emdenoise.outputs import write_json_atomic
from emdenoise.layout import MANIFEST, RAW_FILES, RAW_SPLITS
from emdenoise.lock import LOCK_NAME as FOLDER_LOCK_NAME
from emdenoise.log import progress

MANIFEST_FORMAT = "emdenoise-raw-manifest/1"
REQUIRED = tuple(f"{split}/{name}" for split in RAW_SPLITS for name in RAW_FILES.values())
LAYOUT_TEXT = ("the em_graphene_sim layout: train/ and test/, each holding " +
               " and ".join(sorted(RAW_FILES.values())))
GENERATOR_KEYS = ("seed", "train_images", "test_images", "image_size", "dose_min", "dose_max",
                  "dead_pixel_fraction")
LOCK_NAME = ".download.lock"
STAGING_PREFIX = ".extract-"


# -- sources ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where the data come from, parsed from ``download.source``."""

    kind: str                  # synthetic, s3, zip_url, zip_file or folder
    name: str                  # the parameter as given
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    url: str = ""
    path: Path | None = None

    def location(self) -> dict[str, Any]:
        """What identifies the source in MANIFEST.json."""
        if self.kind == "s3":
            return {"endpoint": self.endpoint, "bucket": self.bucket, "prefix": self.prefix}
        if self.kind == "zip_url":
            return {"url": self.url}
        if self.kind in ("zip_file", "folder"):
            return {"path": str(self.path)}
        return {}

    def describe(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"
        return self.url or str(self.path or self.name)


def parse_source(value: str, endpoint: str, where: Any = "parameters") -> Source:
    """Turn ``download.source`` (and ``download.endpoint`` for ``s3://``) into a :class:`Source`."""
    def bad(expected: str) -> InputError:
        return InputError.at(where, "download.source", f"expected {expected}, got {value!r}")

    if value == "synthetic":
        return Source("synthetic", value)
    if value in S3_SOURCES:
        ep, bucket, prefix = S3_SOURCES[value]
        return Source("s3", value, endpoint=ep, bucket=bucket, prefix=prefix)
    if value == "minibatch":
        return Source("zip_url", value, url=MINIBATCH_URL)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise bad("a URL with a host, e.g. https://host/bucket/prefix")
        if https_required(value):
            raise InputError.at(where, "download.source", f"{value}: {HTTPS_REQUIRED}")
        if parts.path.lower().endswith(".zip"):
            return Source("zip_url", value, url=value)
        bucket, _, prefix = unquote(parts.path).lstrip("/").partition("/")
        if not bucket or parts.query:
            raise bad("a path-style S3 URL https://host/bucket/prefix, or a URL of a .zip")
        return Source("s3", value, endpoint=f"{scheme}://{parts.netloc}", bucket=bucket,
                      prefix=_normal_prefix(prefix))
    if scheme == "s3":
        if not parts.netloc:
            raise bad("s3://bucket/prefix")
        ep = urlsplit(endpoint)
        if ep.scheme.lower() not in ("http", "https") or not ep.netloc:
            raise InputError.at(where, "download.endpoint", f"expected an https:// URL, got {endpoint!r}")
        if https_required(endpoint):
            raise InputError.at(where, "download.endpoint", f"{endpoint}: {HTTPS_REQUIRED}")
        return Source("s3", value, endpoint=endpoint.rstrip("/"), bucket=parts.netloc,
                      prefix=_normal_prefix(unquote(parts.path)))
    if scheme == "file":
        path = Path(unquote(parts.path))
    elif scheme and len(scheme) > 1:
        raise bad("synthetic, stfc, osn, minibatch, an http(s):// or s3:// URL, or a local folder or .zip")
    else:
        path = Path(value).expanduser()
    path = path.resolve()
    if path.is_dir():
        return Source("folder", value, path=path)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise bad("a folder or a .zip file")
        return Source("zip_file", value, path=path)
    raise bad(f"an existing folder or .zip ({path} does not exist)")


def _normal_prefix(prefix: str) -> str:
    """'ms/em_graphene_sim' -> 'ms/em_graphene_sim/' (so that a sibling 'ms/em_graphene_sim_v2/' is not listed)."""
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def key_to_relpath(prefix: str, key: str, where: str) -> str | None:
    """The local path (posix, relative to raw_data_dir) of an object; None for a folder marker.

    A key that would land outside raw_data_dir (absolute, ``..``, empty parts, backslashes) is refused.
    """
    if not key.startswith(prefix):
        raise RuntimeFailure(f"{where}: the listing returned key {key!r}, which is not under the prefix {prefix!r}")
    rel = key[len(prefix):]
    if rel == "":
        return None
    marker = rel.endswith("/")
    parts = rel[:-1].split("/") if marker else rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{where}: key {key!r}: refused: its local path would land outside raw_data_dir "
                         f"(absolute, empty or '..' parts)")
    return None if marker else rel


def _reserved(rel: str) -> bool:
    """Names the download itself uses inside raw_data_dir."""
    first = rel.split("/", 1)[0]
    return rel in (MANIFEST, LOCK_NAME, FOLDER_LOCK_NAME) or rel.endswith(".part") or first.startswith(STAGING_PREFIX)


def find_layout_root(paths: Iterable[str], where: Any) -> str:
    """The shallowest folder ('' or 'a/b/') holding train/ and test/ with both files each, among posix ``paths``.

    Raises a one-line :class:`InputError` naming what is missing when no folder has them all.
    """
    paths = set(paths)
    counts: dict[str, int] = {}
    for path in paths:
        for req in REQUIRED:
            if path == req or path.endswith("/" + req):
                root = path[:-len(req)]
                counts[root] = counts.get(root, 0) + 1
    complete = sorted((r for r, n in counts.items() if n == len(REQUIRED)), key=lambda r: (r.count("/"), r))
    if complete:
        if len(complete) > 1 and complete[1].count("/") == complete[0].count("/"):
            raise InputError(f"{where}: the layout appears in more than one folder ({complete[0]!r}, "
                             f"{complete[1]!r}): point download.source at one of them")
        return complete[0]
    best = max(counts, key=lambda r: (counts[r], -r.count("/")), default="")
    missing = [req for req in REQUIRED if best + req not in paths]
    under = f" under {best!r}" if best else ""
    raise InputError(f"{where}: no {', '.join(missing)}{under}: expected {LAYOUT_TEXT}")


def check_raw_layout(raw_dir: Path) -> None:
    """After a download: the four files of the raw layout must be there."""
    missing = [req for req in REQUIRED if not (raw_dir / req).is_file()]
    if missing:
        raise InputError(f"{raw_dir}: no {', '.join(missing)}: expected {LAYOUT_TEXT}")


# -- the manifest -----------------------------------------------------------------------------------------------
def read_manifest(raw_dir: Path, log) -> dict | None:
    path = raw_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); it will be rewritten", path, exc.__class__.__name__)
        return None
    if not (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("files"), list)
            and all(_good_entry(e) for e in data["files"])):
        log.warning("%s: not an emdenoise manifest; it will be rewritten", path)
        return None
    return data


def _good_entry(entry: Any) -> bool:
    """A file entry with a safe relative path, a size and a sha256."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    parts = entry["path"].split("/")
    return (not entry["path"].startswith("/") and all(p not in ("", ".", "..") for p in parts)
            and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str))


def _entries(manifest: dict | None) -> dict[str, dict]:
    """path -> file entry of a manifest."""
    return {e["path"]: e for e in manifest["files"]} if manifest else {}


def _same(old: dict | None, new: dict) -> bool:
    """Whether two manifests say the same thing (their times aside)."""
    if old is None:
        return False
    strip = ("created", "emdenoise_version")
    return {k: v for k, v in old.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}


# -- the task ---------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One run of the task: the parameters, the folder, and the manifest found there."""

    source: Source
    params: dict[str, Any]
    raw_dir: Path
    log: Any
    old: dict | None
    started: float = field(default_factory=time.monotonic)

    # helpers shared by the sources
    def client(self) -> HttpClient:
        return HttpClient(self.params["retries"], self.params["timeout"], self.log)

    def manifest(self, files: list[dict], **extra) -> dict:
        files = sorted(files, key=lambda e: e["path"])
        return {"format": MANIFEST_FORMAT, "source": self.source.name, "kind": self.source.kind,
                **self.source.location(), **extra, "file_count": len(files),
                "total_bytes": sum(e["size"] for e in files), "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "emdenoise_version": __version__}

    def verified(self, entries: Iterable[dict]) -> bool:
        """True when every entry's file is in raw_data_dir with its recorded size and sha256."""
        entries = list(entries)
        if not entries:
            return False
        for entry in entries:
            path = self.raw_dir / entry["path"]
            if not path.is_file() or path.stat().st_size != entry.get("size"):
                return False
        with progress(total=sum(e["size"] for e in entries), desc="verify", unit="B", unit_scale=True,
                      unit_divisor=1024) as bar:
            return all(file_digests(self.raw_dir / e["path"], bar, md5=False)[1] == e["sha256"] for e in entries)

    def old_copy_is_complete(self) -> bool:
        """The manifest describes this very source and its files are all there, intact."""
        return (self.old is not None and self.old.get("source") == self.source.name
                and all(self.old.get(k) == v for k, v in self.source.location().items())
                and self.verified(self.old["files"]))

    def nothing_to_do(self, what: str, new: dict | None = None) -> None:
        files = new["files"] if new else self.old["files"]
        self.log.info("nothing to %s: all %d files (%s) in %s are present and match %s", what, len(files),
                      _mib(sum(e["size"] for e in files)), self.raw_dir, MANIFEST)
        if new is not None and not _same(self.old, new):
            self.write(new)

    def write(self, manifest: dict) -> None:
        """Make ``manifest`` (of a run that succeeded) MANIFEST.json, first removing the files it replaces."""
        self.remove_stale(manifest)
        write_json_atomic(self.raw_dir / MANIFEST, manifest)
        self.log.info("wrote %s (%d files, %s)", self.raw_dir / MANIFEST, manifest["file_count"],
                      _mib(manifest["total_bytes"]))

    def remove_stale(self, manifest: dict) -> None:
        """Remove the files the previous manifest listed and ``manifest`` does not, and the folders that leaves
        empty: after a switch of source nothing of the old one (an ``inference/`` folder, say) is left for
        preprocess to pick up. Files no manifest listed are never touched.

        Done before the new manifest is written, so a run killed in between removes them on the next success.
        """
        keep = set(_entries(manifest))
        stale = sorted(set(_entries(self.old)) - keep)
        raw = self.raw_dir.resolve()
        removed = 0
        for rel in stale:
            path = self.raw_dir / rel
            # read_manifest admits only relative paths without '..'; a symlinked folder could still lead out
            if path.is_symlink() or not path.is_file() or raw not in path.resolve().parents:
                continue
            try:
                path.unlink()
            except OSError as exc:
                raise RuntimeFailure(f"{path}: cannot remove this file of the previous download "
                                     f"({exc.strerror or exc})") from None
            removed += 1
            for folder in path.parents:
                if folder == self.raw_dir:
                    break
                try:
                    folder.rmdir()          # only when empty
                except OSError:
                    break
        if removed:
            self.log.info("removed %d file%s of the previous download (%s) that the new one does not have",
                          removed, "s" if removed != 1 else "", self.old.get("source"))

    def done(self, verb: str, count: int, nbytes: int) -> None:
        seconds = max(time.monotonic() - self.started, 1e-6)
        self.log.info("%s %d files (%s) in %.1f s (%.1f MiB/s)", verb, count, _mib(nbytes), seconds,
                      nbytes / 2**20 / seconds)

    def disk_check(self, need: int) -> None:
        free = shutil.disk_usage(self.raw_dir).free
        if need > free:
            raise RuntimeFailure(f"{self.raw_dir}: not enough disk space: {_mib(need)} to write, {_mib(free)} free")

    # the sources
    def from_synthetic(self) -> None:
        try:
            from emdenoise.data import synthetic
        except ImportError as exc:
            raise RuntimeFailure(f"the synthetic generator cannot be loaded ({exc})") from None
        generator = {k: self.params[k] for k in GENERATOR_KEYS}
        generator["generator_version"] = getattr(synthetic, "GENERATOR_VERSION", __version__)
        if (self.old is not None and self.old.get("kind") == "synthetic" and self.old.get("generator") == generator
                and self.verified(self.old["files"])):
            self.nothing_to_do("generate")
            return
        written = synthetic.write_dataset(self.raw_dir, **{k: self.params[k] for k in GENERATOR_KEYS},
                                          workers=self.params["workers"], log=self.log)
        files = []
        for path in written:
            path = Path(path).resolve()
            files.append({"path": path.relative_to(self.raw_dir.resolve()).as_posix(), "size": path.stat().st_size,
                          "sha256": file_digests(path, md5=False)[1]})
        manifest = self.manifest(files, generator=generator)
        self.done("generated", len(files), manifest["total_bytes"])
        self.write(manifest)

    def from_s3(self) -> None:
        src = self.source
        listing = f"{src.endpoint}/{src.bucket}?list-type=2&prefix={src.prefix}"
        with self.client() as client:
            objects, pages = client.list_objects(src.endpoint, src.bucket, src.prefix, self.params["page_size"])
            self.log.info("listed %d objects under s3://%s/%s at %s (%d page%s)", len(objects), src.bucket,
                          src.prefix, src.endpoint, pages, "s" if pages != 1 else "")
            plan = {}
            for obj in objects:
                rel = key_to_relpath(src.prefix, obj.key, listing)
                if rel is None:
                    continue
                if _reserved(rel):
                    self.log.warning("skipping %s: the name is reserved for the download's own files", obj.key)
                    continue
                plan[rel] = obj
            if not plan:
                raise InputError(f"{listing}: the listing is empty: no objects under this prefix; check "
                                 f"download.source (a download that fetches nothing is an error, not a success)")
            root = find_layout_root(plan, listing)
            if root:
                outside = [rel for rel in plan if not rel.startswith(root)]
                self.log.info("the layout is under %s%s; mirroring that folder%s", src.prefix, root,
                              f" ({len(outside)} objects outside it skipped)" if outside else "")
                plan = {rel[len(root):]: obj for rel, obj in plan.items() if rel.startswith(root)}

            todo, files = self._check_present(plan)
            if not todo:
                self.nothing_to_do("download", self.manifest(files))
                return
            for rel, obj in todo:
                self.log.debug("to download: %s (%d bytes)", obj.key, obj.size)
            parts = {rel: part_path(self.raw_dir / rel) for rel, _ in todo}
            have = sum(p.stat().st_size for p in parts.values() if p.is_file())
            need = sum(obj.size for _, obj in todo)
            self.disk_check(need - have)
            self.log.info("downloading %d of %d files (%s)%s", len(todo), len(plan), _mib(need),
                          f", resuming {_mib(have)} already in .part files" if have else "")
            fetched = []
            with progress(total=need, desc="download", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                for rel, obj in todo:
                    url = f"{src.endpoint}/{quote(src.bucket, safe='')}/{quote(obj.key, safe='/~')}"
                    try:
                        fetched.append((rel, obj, client.download(url, parts[rel], obj.size, obj.etag, bar)))
                    except NotFound:
                        raise RuntimeFailure(f"{url}: listed but not found (HTTP 404): the bucket changed during "
                                             f"the download; run download again") from None
        # Every file is complete and verified: only now do they replace anything in raw_data_dir.
        for rel, obj, got in fetched:
            _move_into_place(got.part, self.raw_dir / rel)
            files.append({"path": rel, "key": obj.key, "size": got.size, "etag": obj.etag, "md5": got.md5,
                          "sha256": got.sha256})
        self.done("downloaded", len(fetched), need - have)
        self.write(self.manifest(files))

    def _check_present(self, plan: dict) -> tuple[list, list[dict]]:
        """Split the plan into objects to fetch and manifest entries of files already here and intact.

        A local file counts as intact when its size matches and either its sha256 matches the manifest entry
        recorded for the same ETag, or (no such entry) its MD5 matches a single-part ETag: a copy made by
        other tools is adopted without downloading it again.
        """
        old = _entries(self.old)

        def known(rel, obj) -> dict | None:
            entry = old.get(rel)
            return entry if entry and entry.get("etag") == obj.etag and entry.get("size") == obj.size else None

        candidates = {rel for rel, obj in plan.items()
                      if (self.raw_dir / rel).is_file() and (self.raw_dir / rel).stat().st_size == obj.size
                      and (known(rel, obj) or is_md5_etag(obj.etag))}
        todo, files = [], []
        with progress(total=sum(plan[r].size for r in candidates), desc="verify", unit="B", unit_scale=True,
                      unit_divisor=1024, disable=not candidates) as bar:
            for rel, obj in plan.items():
                if rel in candidates:
                    entry = known(rel, obj)
                    md5, sha = file_digests(self.raw_dir / rel, bar, md5=entry is None)
                    if entry is not None and entry["sha256"] == sha:
                        md5 = entry.get("md5")
                    if (entry is not None and entry["sha256"] == sha) or (entry is None and md5 == obj.etag):
                        files.append({"path": rel, "key": obj.key, "size": obj.size, "etag": obj.etag, "md5": md5,
                                      "sha256": sha})
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
                with progress(total=size, desc="download", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                    got = client.download(src.url, part, size, etag, bar)
            archive = {"size": got.size, "etag": got.etag, "sha256": got.sha256}
            self._extract(part, src.url, archive)
            part.unlink(missing_ok=True)
        else:
            size = src.path.stat().st_size
            with progress(total=size, desc="verify", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                archive = {"size": size, "sha256": file_digests(src.path, bar, md5=False)[1]}
            if self._old_archive_matches(archive):
                self.nothing_to_do("extract")
                return
            self._extract(src.path, str(src.path), archive)

    def _old_archive_matches(self, archive: dict) -> bool:
        old_archive = (self.old or {}).get("archive") or {}
        return (all(old_archive.get(k) == v for k, v in archive.items())
                and self.old_copy_is_complete())

    def _extract(self, zip_path: Path, where: str, archive: dict) -> None:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.raw_dir))
        try:
            try:
                extracted = extract_zip(zip_path, staging, self.params["max_archive_bytes"])
                root = find_layout_root((f.path for f in extracted), where)
            except InputError:
                if zip_path.name.endswith(".part"):
                    zip_path.unlink(missing_ok=True)      # a bad archive is not worth resuming
                raise
            files = []
            for item in extracted:
                if not item.path.startswith(root) or _reserved(item.path[len(root):]):
                    continue
                rel = item.path[len(root):]
                dest = self.raw_dir / rel
                _move_into_place(staging / item.path, dest)
                files.append({"path": rel, "member": item.path, "size": item.size, "sha256": item.sha256})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.done("extracted", len(files), sum(f["size"] for f in files))
        self.write(self.manifest(files, archive=archive))

    def from_folder(self) -> None:
        src_dir = self.source.path
        raw = self.raw_dir.resolve()
        found = []
        for dirpath, dirnames, filenames in os.walk(src_dir):
            here = Path(dirpath)
            # raw_data_dir inside the source folder: do not copy it into itself.
            dirnames[:] = sorted(d for d in dirnames if raw == src_dir or (here / d).resolve() != raw)
            for name in sorted(filenames):
                rel = (here / name).relative_to(src_dir).as_posix()
                if (here / name).is_file() and not _reserved(rel):
                    found.append(rel)
        root = find_layout_root(found, src_dir)
        plan = {rel[len(root):]: src_dir / rel for rel in found if rel.startswith(root)}
        in_place = (src_dir / root).resolve() == raw
        todo, files = [], []
        total = sum(p.stat().st_size for p in plan.values())
        with progress(total=total, desc="verify", unit="B", unit_scale=True, unit_divisor=1024) as bar:
            for rel, path in sorted(plan.items()):
                size = path.stat().st_size
                sha = file_digests(path, bar, md5=False)[1]
                dest = self.raw_dir / rel
                entry = {"path": rel, "size": size, "sha256": sha}
                if in_place or (dest.is_file() and dest.stat().st_size == size and
                                file_digests(dest, md5=False)[1] == sha):
                    files.append(entry)
                else:
                    todo.append((rel, path, entry))
        if not todo:
            if in_place:
                self.log.info("the source is raw_data_dir itself: its %d files are recorded as they are", len(files))
            self.nothing_to_do("copy", self.manifest(files))
            return
        need = sum(e["size"] for _, _, e in todo)
        self.disk_check(need)
        copied = []
        try:
            with progress(total=need, desc="copy", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                for rel, path, entry in todo:
                    part = part_path(self.raw_dir / rel)
                    _copy_verified(path, part, entry["sha256"], bar)
                    copied.append((part, rel, entry))
        except BaseException:
            for part, _, _ in copied:
                part.unlink(missing_ok=True)
            raise
        for part, rel, entry in copied:
            _move_into_place(part, self.raw_dir / rel)
            files.append(entry)
        self.done("copied", len(copied), need)
        self.write(self.manifest(files))


def _move_into_place(src: Path, dest: Path) -> None:
    """Atomically rename a complete, verified file onto its final name."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    except OSError as exc:
        raise RuntimeFailure(f"{dest}: cannot move the new file into place ({exc.strerror or exc})") from None


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


@contextlib.contextmanager
def _lock(raw_dir: Path):
    """Only one download writes into a folder at a time (exit code 3 for the second)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(raw_dir / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{raw_dir}: another download is writing into this folder ({LOCK_NAME}); wait for it "
                            f"to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def run(ctx) -> None:
    params = ctx.params.download
    raw_dir = Path(ctx.paths["raw_data_dir"])
    source = parse_source(params["source"], params["endpoint"], ctx.paths.get("parameters_file") or "parameters")
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"{raw_dir}: cannot create raw_data_dir ({exc.strerror or exc})") from None
    ctx.log.info("source: %s -> %s", source.describe(), raw_dir)
    with _lock(raw_dir):
        for stale in raw_dir.glob(STAGING_PREFIX + "*"):      # left by a run that was killed while extracting
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
                ctx.log.info("removed %s, left by an interrupted extraction", stale)
        job = _Job(source, params, raw_dir, ctx.log, read_manifest(raw_dir, ctx.log))
        handler = {"synthetic": job.from_synthetic, "s3": job.from_s3, "zip_url": job.from_zip,
                   "zip_file": job.from_zip, "folder": job.from_folder}[source.kind]
        try:
            handler()
        except Unreachable as exc:
            if source.kind not in ("s3", "zip_url") or not job.old_copy_is_complete():
                raise
            ctx.log.warning("%s", exc.message)
            ctx.log.warning("using the copy already in %s: it matches %s (downloaded %s)", raw_dir, MANIFEST,
                            job.old.get("created"))
    check_raw_layout(raw_dir)
