"""The HTTP client's rules: plain http only to this machine, single-part ETags told from multipart ones."""

from __future__ import annotations

import pytest

from emdenoise.data.acquire import fetch
from emdenoise.data.acquire.fetch import is_md5_etag


@pytest.mark.parametrize(
    "url,refused",
    [
        ("https://s3.echo.stfc.ac.uk/b/p", False),
        ("HTTPS://example.org/x.zip", False),
        ("http://127.0.0.1:9000/b/p", False),
        ("http://127.8.9.10/b", False),
        ("http://[::1]:9000/b", False),
        ("http://localhost:9000/b", False),
        ("http://LOCALHOST/b", False),
        ("http://192.0.2.1/b/p", True),
        ("http://example.org/x.zip", True),
        ("http://10.0.0.1/b", True),
        ("http://127.0.0.1.example.org/b", True),
        ("http://localhost.example.org/b", True),
        ("http://[::ffff:c000:201]/b", True),
        ("ftp://127.0.0.1/b", True),
        ("//example.org/b", True),
    ],
)
def test_plain_http_is_allowed_only_to_this_machine(url, refused):
    assert fetch.https_required(url) is refused


def test_md5_etags_are_told_from_multipart_ones():
    assert is_md5_etag("d41d8cd98f00b204e9800998ecf8427e")
    assert not is_md5_etag("d41d8cd98f00b204e9800998ecf8427e-3")
    assert not is_md5_etag(None) and not is_md5_etag("abc")
