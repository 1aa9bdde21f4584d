"""Fetching the real example files (emdenoise.data.acquire.examples): only the named members are extracted,
checked like a download's zip (a member that would leave the folder is refused) and against their SHA-256."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from emdenoise.data.acquire import examples
from emdenoise.errors import InputError


def wheel_with(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_member_is_extracted_when_its_checksum_matches(tmp_path):
    wheel = wheel_with(tmp_path / "w.whl", {"pkg/data/a.dm3": b"abc", "pkg/other.py": b"x"})
    out = examples.extract_member(
        wheel, "pkg/data/a.dm3", tmp_path / "cache" / "a.dm3", hashlib.sha256(b"abc").hexdigest()
    )
    assert out.read_bytes() == b"abc" and sorted(p.name for p in out.parent.iterdir()) == ["a.dm3"]


def test_a_member_with_other_bytes_is_refused_and_nothing_is_left(tmp_path):
    wheel = wheel_with(tmp_path / "w.whl", {"pkg/a.dm3": b"abc"})
    with pytest.raises(InputError, match="expected SHA-256"):
        examples.extract_member(wheel, "pkg/a.dm3", tmp_path / "cache" / "a.dm3", "0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("evil", ["../escape.dm3", "/etc/escape.dm3"])
def test_a_wheel_with_a_member_escaping_the_folder_is_refused(tmp_path, evil):
    wheel = wheel_with(tmp_path / "w.whl", {"pkg/a.dm3": b"abc", evil: b"x"})
    with pytest.raises(InputError, match="refused"):
        examples.extract_member(wheel, "pkg/a.dm3", tmp_path / "cache" / "a.dm3", hashlib.sha256(b"abc").hexdigest())
    assert not (tmp_path / "cache" / "a.dm3").exists() and not (tmp_path / "escape.dm3").exists()


def test_a_cached_wheel_with_a_wrong_checksum_is_refused(tmp_path):
    (tmp_path / examples.WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(InputError, match="sha256"):
        examples.fetch_wheel(tmp_path)
