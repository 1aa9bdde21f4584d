"""What a remote file is and how it is checked, without any network: :class:`RemoteObject` (an S3 listing
entry), :class:`Fetched` (a finished download), ETags, the https rule, the ``.part`` files, digests, and the
S3 ListObjectsV2 answer parsed (:func:`parse_listing`). The client that talks to servers is
:mod:`emdenoise.data.acquire.fetch`."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from emdenoise.errors import InputError, RuntimeFailure

CHUNK_BYTES = 1 << 20
HTTPS_REQUIRED = "https:// is required (plain http:// only to this machine: 127.0.0.1, ::1 or localhost)"

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RemoteObject:
    """One entry of a bucket listing."""

    key: str
    size: int
    etag: str | None


@dataclass(frozen=True)
class Fetched:
    """A complete, verified ``.part`` file."""

    part: Path
    size: int
    md5: str
    sha256: str
    etag: str | None


def clean_etag(value: str | None) -> str | None:
    """``W/"abc"`` or ``"abc"`` -> ``abc`` (lower case); None stays None."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


def is_md5_etag(etag: str | None) -> bool:
    """True when ``etag`` is a single-part S3 ETag, i.e. the object's MD5 (a multipart ETag has a ``-N`` tail)."""
    return etag is not None and _MD5_ETAG.match(etag) is not None


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1): a connection that never leaves the
    machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def https_required(url: str) -> bool:
    """True when ``url`` may not be requested: it is neither ``https://`` nor ``http://`` to a loopback host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return not (scheme == "https" or scheme == "http" and is_loopback_host(parts.hostname))


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` is staged until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def file_digests(path: Path, bar=None, md5: bool = True) -> tuple[str | None, str]:
    """(md5, sha256) of a file's bytes, read once (md5 None when not asked for: it is the slower of the two).

    ``bar`` (a tqdm bar in bytes) advances as it reads.
    """
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            if md5_hash is not None:
                md5_hash.update(chunk)
            sha.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return (md5_hash.hexdigest() if md5_hash is not None else None), sha.hexdigest()


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def child_text(elem: ET.Element, name: str) -> str | None:
    """The text of ``elem``'s child ``name`` (any namespace), None without one."""
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def parse_listing(
    root: ET.Element, url: str, page: int, seen_tokens: set[str]
) -> tuple[list[RemoteObject], str | None]:
    """One page of a ListObjectsV2 answer from ``url``: its objects, and the continuation token of the next
    page (None on the last; a truncated page without a new token is a RuntimeFailure)."""
    if _local(root.tag) != "ListBucketResult":
        raise InputError(
            f"{url}: the answer is not an S3 bucket listing (root element <{_local(root.tag)}>); check download.source"
        )
    objects = []
    for elem in root:
        if _local(elem.tag) != "Contents":
            continue
        key, size = child_text(elem, "Key"), child_text(elem, "Size")
        if key is None or size is None or not size.strip().isdigit():
            raise RuntimeFailure(f"{url}: malformed listing entry (Key {key!r}, Size {size!r})")
        objects.append(RemoteObject(key, int(size), clean_etag(child_text(elem, "ETag"))))
    if (child_text(root, "IsTruncated") or "").strip().lower() != "true":
        return objects, None
    token = child_text(root, "NextContinuationToken")
    if not token or token in seen_tokens:
        raise RuntimeFailure(
            f"{url}: the listing says it is truncated but gives no new continuation token (page {page})"
        )
    return objects, token
