"""Safe zip extraction: a member that inflates past its header is refused."""

from __future__ import annotations

import zipfile

import pytest
from download_servers import (
    _zip_bytes,
)

from emdenoise.data.acquire.archive import extract_zip
from emdenoise.errors import InputError


def test_a_lying_zip_header_cannot_get_past_the_size_limit(tmp_path):
    archive = tmp_path / "liar.zip"
    archive.write_bytes(_zip_bytes({"a.bin": b"\0" * 100_000}))
    data = bytearray(archive.read_bytes())
    # Patch the declared uncompressed size (central directory and local header) down to 10 bytes.
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[0]
    for offset in (info.header_offset + 22, data.rfind(b"PK\x01\x02") + 24):
        data[offset : offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="member 'a.bin': refused"):
        extract_zip(archive, tmp_path / "out", max_bytes=1000)
    written = tmp_path / "out" / "a.bin"
    assert not written.exists() or written.stat().st_size <= 10  # never more than the header admitted
