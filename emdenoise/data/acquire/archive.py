"""Safe extraction of zip archives.

Every member is checked before a single byte is written, and the whole archive is refused (one-line
:class:`InputError` naming the archive and the member) when a member

- has an absolute path (``/etc/x``, ``C:\\x``) or a ``..`` component, i.e. would land outside the folder;
- is a symbolic link or another special file (the Unix file type in the zip's external attributes);
- is encrypted, or appears twice;
- or when the members together expand to more than ``max_bytes`` (``download.max_archive_bytes``).

While extracting, a member that inflates to more than its header claims is refused too (a lying header cannot
get around the size limit). Extract into a fresh folder you own and move the result into place afterwards.
"""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from emdenoise.errors import InputError, RuntimeFailure

CHUNK_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractedFile:
    path: str  # posix path relative to the extraction folder
    size: int
    sha256: str


def _refuse(archive: Path, member: str, why: str) -> InputError:
    return InputError.at(archive, f"member {member!r}", f"refused: {why}")


def member_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or a refusal when it would leave the extraction folder."""
    name = info.filename
    # Backslashes are separators for Windows tools: check them as such.
    text = name.replace("\\", "/")
    if not text or "\x00" in text:
        raise _refuse(archive, name, "empty or invalid name")
    if text.startswith("/") or _DRIVE.match(text):
        raise _refuse(archive, name, "absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "path with '..' would land outside the extraction folder")
    if not parts:
        raise _refuse(archive, name, "empty path")
    return PurePosixPath(*parts)


def _check_type(archive: Path, info: zipfile.ZipInfo) -> None:
    mode = (info.external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(
            archive, info.filename, "symbolic link" if stat.S_ISLNK(mode) else f"special file (mode {oct(mode)})"
        )
    if info.flag_bits & 0x1:
        raise _refuse(archive, info.filename, "encrypted member")


def check_members(archive: Path, zf: zipfile.ZipFile, max_bytes: int) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every member; returns (info, relative path) of each, directories included."""
    checked = []
    seen: set[PurePosixPath] = set()
    total = 0
    for info in zf.infolist():
        rel = member_path(archive, info)
        _check_type(archive, info)
        if rel in seen:
            raise _refuse(archive, info.filename, "appears more than once")
        seen.add(rel)
        if not info.is_dir():
            total += info.file_size
            if total > max_bytes:
                raise _refuse(
                    archive,
                    info.filename,
                    f"the members up to this one expand to {total} bytes, more "
                    f"than download.max_archive_bytes = {max_bytes}",
                )
        checked.append((info, rel))
    return checked


def extract_zip(archive: str | Path, dest: str | Path, max_bytes: int) -> list[ExtractedFile]:
    """Check, then extract ``archive`` into the folder ``dest``; returns the regular files written."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError.at(archive, None, f"expected a readable zip archive ({exc})") from None
    written: list[ExtractedFile] = []
    with zf:
        members = check_members(archive, zf, max_bytes)
        budget = max_bytes
        for info, rel in members:
            target = dest.joinpath(*rel.parts)
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                size, digest = _copy_member(archive, zf, info, target, budget)
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                raise _refuse(archive, info.filename, "a file and a folder of the same name") from None
            except OSError as exc:
                raise RuntimeFailure(f"{target}: cannot write ({exc.strerror or exc})") from None
            budget -= size
            written.append(ExtractedFile(rel.as_posix(), size, digest))
    return written


def _copy_member(
    archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int
) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(CHUNK_BYTES):
                size += len(chunk)
                if size > info.file_size or size > budget:
                    raise _refuse(archive, info.filename, "inflates to more bytes than its header says")
                out.write(chunk)
                sha.update(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise _refuse(archive, info.filename, f"cannot be read ({exc})") from None
    return size, sha.hexdigest()
