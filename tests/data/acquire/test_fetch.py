"""The remote files' rules (emdenoise.data.acquire.remote): plain http only to this machine, single-part
ETags told from multipart ones, the S3 listing parsed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from emdenoise.data.acquire import remote
from emdenoise.data.acquire.remote import RemoteObject, is_md5_etag, parse_listing
from emdenoise.errors import InputError, RuntimeFailure


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
    assert remote.https_required(url) is refused


def test_md5_etags_are_told_from_multipart_ones():
    assert is_md5_etag("d41d8cd98f00b204e9800998ecf8427e")
    assert not is_md5_etag("d41d8cd98f00b204e9800998ecf8427e-3")
    assert not is_md5_etag(None) and not is_md5_etag("abc")


LISTING = (
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Contents><Key>p/a.h5</Key><Size>12</Size><ETag>&quot;{etag}&quot;</ETag></Contents>"
    "<IsTruncated>{truncated}</IsTruncated>{token}</ListBucketResult>"
)


def test_a_listing_page_gives_its_objects_and_the_next_token():
    etag = "0" * 32
    last = ET.fromstring(LISTING.format(etag=etag, truncated="false", token=""))
    assert parse_listing(last, "u", 1, set()) == ([RemoteObject("p/a.h5", 12, etag)], None)
    more = ET.fromstring(
        LISTING.format(etag=etag, truncated="true", token="<NextContinuationToken>t2</NextContinuationToken>")
    )
    assert parse_listing(more, "u", 1, set())[1] == "t2"
    with pytest.raises(RuntimeFailure, match="u: the listing says it is truncated but gives no new continuation token"):
        parse_listing(more, "u", 2, {"t2"})
    with pytest.raises(InputError, match="not an S3 bucket listing"):
        parse_listing(ET.fromstring("<Error/>"), "u", 1, set())
