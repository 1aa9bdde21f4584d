"""``raw_data_dir/MANIFEST.json``: what a download put there (source, files, sizes, sha256), read, built and compared.

A manifest is a JSON object ``{"format": MANIFEST_FORMAT, "source": ..., "kind": ..., <location>, <extra>,
"file_count", "total_bytes", "files": [{"path", "size", "sha256", ...}], "created", "emdenoise_version"}``. The
paths are posix, relative to ``raw_data_dir``; :func:`read_manifest` admits only relative paths without ``..``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emdenoise import __version__
from emdenoise.data.acquire.sources import Source
from emdenoise.layout import MANIFEST

MANIFEST_FORMAT = "emdenoise-raw-manifest/1"
# the keys of a manifest that change from run to run without the data changing
_TIMES = ("created", "emdenoise_version")


def read_manifest(raw_dir: Path, log) -> dict | None:
    """The manifest in ``raw_dir``; None (with a warning) when it is missing, unreadable or not ours."""
    path = raw_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); it will be rewritten", path, exc.__class__.__name__)
        return None
    if not (
        isinstance(data, dict)
        and data.get("format") == MANIFEST_FORMAT
        and isinstance(data.get("files"), list)
        and all(_good_entry(e) for e in data["files"])
    ):
        log.warning("%s: not an emdenoise manifest; it will be rewritten", path)
        return None
    return data


def recorded_source(raw_dir: Path, log) -> Any:
    """The ``source`` recorded in ``raw_dir/MANIFEST.json`` (for the dataset card), or None."""
    path = raw_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable manifest, source not recorded (%s)", path, " ".join(str(exc).split()))
        return None
    return manifest.get("source") if isinstance(manifest, dict) else None


def _good_entry(entry: Any) -> bool:
    """A file entry with a safe relative path, a size and a sha256."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    parts = entry["path"].split("/")
    return (
        not entry["path"].startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
    )


def entries(manifest: dict | None) -> dict[str, dict]:
    """path -> file entry of a manifest ({} for None)."""
    return {e["path"]: e for e in manifest["files"]} if manifest else {}


def same(old: dict | None, new: dict) -> bool:
    """Whether two manifests say the same thing (their times aside)."""
    if old is None:
        return False
    return {k: v for k, v in old.items() if k not in _TIMES} == {k: v for k, v in new.items() if k not in _TIMES}


def build(source: Source, files: list[dict], **extra: Any) -> dict:
    """A new manifest of ``files`` (sorted by path) from ``source``; ``extra`` (generator, archive) is recorded."""
    files = sorted(files, key=lambda e: e["path"])
    return {
        "format": MANIFEST_FORMAT,
        "source": source.name,
        "kind": source.kind,
        **source.location(),
        **extra,
        "file_count": len(files),
        "total_bytes": sum(e["size"] for e in files),
        "files": files,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emdenoise_version": __version__,
    }


def describes(manifest: dict | None, source: Source) -> bool:
    """Whether ``manifest`` was written by a download of this very source."""
    return (
        manifest is not None
        and manifest.get("source") == source.name
        and all(manifest.get(k) == v for k, v in source.location().items())
    )
