"""The download task against a real S3-compatible server (moto's server mode on 127.0.0.1).

A module-wide moto server holds a small dataset in the exact em_graphene_sim layout (real HDF5 files) plus a few
extra objects. Where a test needs the network to misbehave, a small HTTP proxy written here sits between the
client and moto: it records every request and can answer 503, cut a body after N bytes, corrupt a byte, or
stall (say nothing) for longer than the client waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import h5py
import pytest
import requests
from download_servers import (
    BUCKET,
    LAYOUT,
    PREFIX,
    ROOT,
    _closed_port,
    _zip_bytes,
    leftovers,
    local_files,
    manifest,
    run_download,
)
from local_http import LocalServer

from emdenoise.data.acquire import fetch
from emdenoise.data.acquire.fetch import RETRY_BASE_ENV
from emdenoise.data.acquire.run import key_to_relpath
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, InputError, RuntimeFailure
from emdenoise.layout import RAW_FILES


# -- S3 ----------------------------------------------------------------------------------------------------------
def test_full_download_mirrors_the_prefix_byte_for_byte_and_writes_a_manifest(s3, tmp_path, logs):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=s3.url())
    assert local_files(raw) == s3.dataset  # all objects, nothing from sibling prefixes, no marker file
    assert leftovers(raw) == []
    m = manifest(raw)
    assert (m["source"], m["kind"], m["endpoint"], m["bucket"], m["prefix"]) == (
        s3.url(),
        "s3",
        s3.endpoint,
        BUCKET,
        PREFIX,
    )
    assert m["file_count"] == len(s3.dataset) and m["total_bytes"] == sum(map(len, s3.dataset.values()))
    for entry in m["files"]:
        data = s3.dataset[entry["path"]]
        assert entry["key"] == PREFIX + entry["path"]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["md5"] == entry["etag"] == hashlib.md5(data).hexdigest()
    assert m["emdenoise_version"] and m["created"]


def test_listing_follows_continuation_tokens_page_by_page(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), page_size=2)
    pages = proxy.gets("list-type=2")
    keys_under_prefix = len(s3.dataset) + 1  # + the folder marker
    assert len(pages) == -(-keys_under_prefix // 2) >= 3
    assert all("max-keys=2" in p for _, p, _ in proxy.requests if "list-type=2" in p)
    assert sum("continuation-token=" in p for _, p, _ in proxy.requests) == len(pages) - 1
    assert local_files(raw) == s3.dataset


def test_second_run_downloads_nothing_and_a_damaged_file_is_fetched_again(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url(endpoint=proxy.endpoint)
    run_download(raw, logs, source=source)
    first = (raw / "MANIFEST.json").read_bytes()
    object_gets = len(proxy.gets(PREFIX + "train/graphene")) + len(proxy.gets(PREFIX + "README"))
    assert object_gets == 3

    proxy.requests.clear()
    run_download(raw, logs, source=source)
    assert [p for _, p, _ in proxy.requests if "list-type=2" not in p] == []  # listing only
    assert "nothing to download" in logs.text()
    assert (raw / "MANIFEST.json").read_bytes() == first

    damaged = raw / "test/graphene_img_clean.h5"  # same size, one byte changed
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    proxy.requests.clear()
    run_download(raw, logs, source=source)
    fetched = [p for _, p, _ in proxy.requests if "list-type=2" not in p]
    assert fetched == [f"/{BUCKET}/{PREFIX}test/graphene_img_clean.h5"]
    assert local_files(raw) == s3.dataset


def test_files_copied_by_other_tools_are_adopted_by_their_md5(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    for rel, data in s3.dataset.items():  # e.g. an earlier `aws s3 sync`: no MANIFEST.json
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint))
    assert [p for _, p, _ in proxy.requests if "list-type=2" not in p] == []
    assert {e["path"] for e in manifest(raw)["files"]} == set(s3.dataset)


def test_a_cut_connection_leaves_a_part_file_that_the_next_run_resumes_with_range(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    key = PREFIX + "train/graphene_img_noise.h5"
    size = len(s3.dataset["train/graphene_img_noise.h5"])
    proxy.add("cut", key, times=1, arg=5000)
    with pytest.raises(RuntimeFailure, match="connection lost.*run download again"):
        run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=1)
    part = raw / "train/graphene_img_noise.h5.part"
    assert part.stat().st_size == 5000 < size
    assert local_files(raw).keys() <= {f"{rel}.part" for rel in s3.dataset}  # nothing took a final name

    proxy.requests.clear()
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3)
    resumed = proxy.gets(key)
    assert len(resumed) == 1 and resumed[0].get("Range") == "bytes=5000-"
    assert local_files(raw) == s3.dataset and leftovers(raw) == []
    # Objects completed before the cut were kept as .part files and not fetched again.
    assert proxy.gets(PREFIX + "README.txt") == []


def test_a_cut_connection_is_resumed_within_the_same_run(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    key = PREFIX + "test/graphene_img_clean.h5"
    proxy.add("cut", key, times=1, arg=3000)
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3)
    gets = proxy.gets(key)
    assert [g.get("Range") for g in gets] == [None, "bytes=3000-"]
    assert local_files(raw) == s3.dataset


def test_a_stale_part_file_with_wrong_bytes_is_downloaded_afresh(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    key = PREFIX + "test/graphene_img_noise.h5"
    stale = raw / "test/graphene_img_noise.h5.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\xff" * 1000)  # not the object's first 1000 bytes
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint))
    assert [g.get("Range") for g in proxy.gets(key)] == ["bytes=1000-", None]
    assert "downloading it again from the start" in logs.text()
    assert local_files(raw) == s3.dataset and leftovers(raw) == []


def test_a_server_that_ignores_range_is_read_from_the_start(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    key = PREFIX + "train/graphene_img_clean.h5"
    proxy.add("cut", key, times=1, arg=3000)
    proxy.add("norange", key, times=1)
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3)
    assert [g.get("Range") for g in proxy.gets(key)] == [None, "bytes=3000-"]
    assert "does not resume" in logs.text()
    assert local_files(raw) == s3.dataset


def test_checksum_mismatch_fails_and_leaves_the_existing_copy_untouched(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url("mutable/", endpoint=proxy.endpoint)
    run_download(raw, logs, source=source)
    before = local_files(raw)
    old_manifest = (raw / "MANIFEST.json").read_bytes()

    s3.put("mutable/", {"train/graphene_img_clean.h5": s3.dataset["train/graphene_img_noise.h5"]})  # a new version
    proxy.add("corrupt", "mutable/train/graphene_img_clean.h5", times=100)
    with pytest.raises(RuntimeFailure, match="MD5 .* does not match the ETag"):
        run_download(raw, logs, source=source)
    assert local_files(raw) == before  # the old, good file is still in place
    assert (raw / "MANIFEST.json").read_bytes() == old_manifest
    assert leftovers(raw) == []  # the corrupt .part was removed

    proxy.rules.clear()
    run_download(raw, logs, source=source)  # the honest server: the new version arrives
    assert (raw / "train/graphene_img_clean.h5").read_bytes() == s3.dataset["train/graphene_img_noise.h5"]


def test_an_empty_listing_is_an_error(s3, tmp_path, logs):
    with pytest.raises(InputError, match="listing is empty") as err:
        run_download(tmp_path / "raw", logs, source=s3.url("no/such/prefix/"))
    assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in err.value.message
    assert not (tmp_path / "raw" / "MANIFEST.json").exists()


def test_a_missing_bucket_is_a_one_line_404_naming_the_url(s3, tmp_path, logs):
    with pytest.raises(InputError) as err:
        run_download(tmp_path / "raw", logs, source=f"{s3.endpoint}/no-such-bucket/data")
    assert f"{s3.endpoint}/no-such-bucket" in err.value.message and "404" in err.value.message
    assert "NoSuchBucket" in err.value.message and "\n" not in err.value.message


def test_a_missing_zip_is_a_404_naming_the_url(s3, tmp_path, logs):
    url = s3.url("archives/missing.zip")
    with pytest.raises(InputError, match="not found") as err:
        run_download(tmp_path / "raw", logs, source=url)
    assert url in err.value.message


def test_a_listed_object_that_answers_404_fails_in_one_line_and_changes_nothing(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url("vanishing/", endpoint=proxy.endpoint)
    s3.put("vanishing/", s3.dataset)
    run_download(raw, logs, source=source)
    before, old_manifest = local_files(raw), (raw / "MANIFEST.json").read_bytes()

    s3.put("vanishing/", {"test/graphene_img_noise.h5": s3.dataset["test/graphene_img_clean.h5"]})  # a new version
    s3.put("vanishing/", {"test/added.bin": b"new object" * 100})  # listed before it
    proxy.add("status", "vanishing/test/graphene_img_noise.h5", times=100, arg=404)  # ... gone once listed
    with pytest.raises(RuntimeFailure) as err:
        run_download(raw, logs, source=source)
    url = f"{proxy.endpoint}/{BUCKET}/vanishing/test/graphene_img_noise.h5"
    assert err.value.message == (
        f"{url}: listed but not found (HTTP 404): the bucket changed during the download; run download again"
    )
    assert err.value.exit_code == EXIT_RUNTIME
    assert local_files(raw).keys() - before.keys() == {"test/added.bin.part"}  # complete, kept for the next run
    assert {rel: data for rel, data in local_files(raw).items() if rel in before} == before
    assert (raw / "MANIFEST.json").read_bytes() == old_manifest
    assert not (raw / "test/graphene_img_noise.h5.part").exists()


def test_server_errors_are_retried_until_the_server_recovers(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    proxy.add("status", "list-type=2", times=2, arg=503)
    proxy.add("status", PREFIX + "test/graphene_img_noise.h5", times=2, arg=500)
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3)
    assert [a for a, _ in proxy.served] == ["status"] * 4
    assert local_files(raw) == s3.dataset
    assert "retrying" in logs.text()


def test_a_server_that_keeps_failing_gives_up_in_one_line(s3, proxy, tmp_path, logs):
    proxy.add("status", "list-type=2", times=100, arg=503)
    with pytest.raises(RuntimeFailure, match="server error HTTP 503 .* after 2 attempts") as err:
        run_download(tmp_path / "raw", logs, source=s3.url(endpoint=proxy.endpoint), retries=2)
    assert len(proxy.gets("list-type=2")) == 2 and "\n" not in err.value.message


@pytest.mark.parametrize(
    "action,said",
    [
        ("stall", "no answer within 0.5 s"),  # before the status line
        ("stall_body", "no data for 0.5 s"),
    ],
)  # in the middle of the body
def test_a_server_that_stalls_past_the_timeout_is_retried_until_it_answers(s3, proxy, tmp_path, logs, action, said):
    raw = tmp_path / "raw"
    key = PREFIX + "train/graphene_img_noise.h5"
    proxy.add(action, key, times=2, arg=3000)
    started = time.monotonic()
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3, timeout=0.5)
    assert time.monotonic() - started < proxy.stall_s  # gave up waiting after 0.5 s, twice
    assert [a for a, _ in proxy.served] == [action, action] and len(proxy.gets(key)) == 3
    assert local_files(raw) == s3.dataset and leftovers(raw) == []
    retries = [line for line in logs.lines if key in line and "retrying" in line]
    assert len(retries) == 2 and all(said in line for line in retries)


def test_an_unreachable_host_says_offline_and_points_to_synthetic(tmp_path, logs):
    with pytest.raises(RuntimeFailure) as err:
        run_download(tmp_path / "raw", logs, source=f"http://127.0.0.1:{_closed_port()}/{BUCKET}/{PREFIX}", retries=2)
    message = err.value.message
    assert "offline or unreachable" in message and "source: synthetic" in message and "\n" not in message


def test_a_host_that_drops_packets_is_offline_after_a_short_connect_timeout(silent_port, tmp_path, logs, monkeypatch):
    # Waiting for a connection is capped at CONNECT_TIMEOUT_S, apart from download.timeout (the wait for data).
    assert fetch.CONNECT_TIMEOUT_S == 10
    assert fetch.HttpClient(timeout=60).connect_timeout == 10 and fetch.HttpClient(timeout=2).connect_timeout == 2
    monkeypatch.setattr(fetch, "CONNECT_TIMEOUT_S", 0.3)  # the cap, made small to keep the test fast
    origin = f"https://127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as err:
        run_download(tmp_path / "raw", logs, source=f"{origin}/{BUCKET}/{PREFIX}", retries=3, timeout=60)
    assert time.monotonic() - started < 10  # 3 x 0.3 s, not 3 x 60 s
    message = err.value.message
    assert message.startswith(f"cannot reach {origin} (no connection within 0.3 s) after 3 attempts")
    assert "offline or unreachable" in message and "download.source: synthetic" in message and "\n" not in message
    assert err.value.exit_code == EXIT_RUNTIME


def test_offline_rerun_uses_a_verified_copy_but_not_a_damaged_one(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url(endpoint=proxy.endpoint)
    run_download(raw, logs, source=source)
    proxy.close()  # the host goes away
    run_download(raw, logs, source=source, retries=1)
    assert "using the copy already in" in logs.text()
    (raw / "README.txt").write_bytes(b"changed")
    with pytest.raises(RuntimeFailure, match="synthetic"):
        run_download(raw, logs, source=source, retries=1)


def test_tls_certificates_are_always_verified(tls_server, tmp_path, logs):
    with pytest.raises(RuntimeFailure, match=r"TLS certificate verification failed \(self-signed") as err:
        run_download(tmp_path / "raw", logs, source=f"{tls_server}/{BUCKET}/{PREFIX}", retries=3)
    assert "\n" not in err.value.message


def _record_requests(monkeypatch) -> list[str]:
    """The URLs of every request ``requests`` actually sends from now on (redirect hops included)."""
    sent: list[str] = []
    real_send = requests.adapters.HTTPAdapter.send

    def send(self, request, **kwargs):
        sent.append(request.url)
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return sent


@pytest.mark.parametrize(
    "source,field",
    [
        ("http://192.0.2.1/sciml-datasets/ms/em_graphene_sim/", "download.source"),
        ("http://example.org/data/em.zip", "download.source"),
        ("http://127.0.0.1.example.org/sciml-datasets/ms/", "download.source"),
        ("s3://sciml-datasets/ms/em_graphene_sim/", "download.endpoint"),
    ],
)
def test_plain_http_to_another_host_is_refused_before_connecting(tmp_path, logs, monkeypatch, source, field):
    sent = _record_requests(monkeypatch)
    with pytest.raises(InputError) as err:
        run_download(tmp_path / "raw", logs, source=source, endpoint="http://192.0.2.1:9000")
    message = err.value.message
    url = source if field == "download.source" else "http://192.0.2.1:9000"
    assert message.startswith(f"test.yaml: {field}: {url}: https:// is required") and "\n" not in message
    assert err.value.exit_code == EXIT_BAD_INPUT and sent == []
    with fetch.HttpClient() as client, pytest.raises(InputError, match="https:// is required"):
        client.probe("http://192.0.2.1/x.zip")  # the client refuses it too
    assert sent == []


@pytest.fixture
def redirecting_server(tls_cert, dataset, monkeypatch):
    """An HTTPS server on 127.0.0.1, trusted through REQUESTS_CA_BUNDLE, serving /em.zip (the dataset) and
    redirects: /to-http.zip -> http://192.0.2.1/em.zip, /hop.zip -> /to-http.zip, /to-https.zip ->
    https://127.0.0.1:PORT/em.zip. ``hits`` counts the GETs of each path."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_cert[1]))
    body = _zip_bytes({f"em_graphene_sim/{rel}": data for rel, data in dataset.items()})
    hits: dict[str, int] = {}
    redirects = {"/to-http.zip": "http://192.0.2.1/em.zip", "/hop.zip": "/to-http.zip", "/to-https.zip": "{url}/em.zip"}

    def get(h: BaseHTTPRequestHandler) -> None:
        hits[h.path] = hits.get(h.path, 0) + 1
        if h.path in redirects:
            h.send_response(302)
            h.send_header("Location", redirects[h.path].format(url=server.url))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200 if h.path == "/em.zip" else 404)
        data = body if h.path == "/em.zip" else b""
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    server = LocalServer(get, tls=tls_cert[0])
    server.hits = hits
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/to-http", "/hop"])
def test_a_redirect_from_https_to_plain_http_is_refused_before_it_is_followed(
    redirecting_server, dataset, tmp_path, logs, monkeypatch, path
):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=f"{redirecting_server.url}/to-https.zip")  # a redirect to https is followed
    assert local_files(raw) == dataset and redirecting_server.hits["/em.zip"] == 2  # probe and download
    before = (raw / "MANIFEST.json").read_bytes()

    sent = _record_requests(monkeypatch)
    with pytest.raises(InputError) as err:
        run_download(raw, logs, source=f"{redirecting_server.url}{path}.zip")
    assert err.value.message == (
        f"{redirecting_server.url}/to-http.zip: refused to follow its redirect (HTTP 302) "
        f"to http://192.0.2.1/em.zip: https:// is required (plain http:// only to this "
        f"machine: 127.0.0.1, ::1 or localhost)"
    )
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert not any("192.0.2.1" in url for url in sent) and sent  # asked the https server, never the other
    assert local_files(raw) == dataset and (raw / "MANIFEST.json").read_bytes() == before
    assert leftovers(raw) == []


def test_a_key_that_would_escape_raw_data_dir_is_refused(s3, tmp_path, logs):
    raw = tmp_path / "sub" / "raw"
    with pytest.raises(InputError, match=r"'escape/\.\./evil\.txt'.*outside raw_data_dir"):
        run_download(raw, logs, source=s3.url("escape/"))
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (raw / "train").exists()


@pytest.mark.parametrize(
    "key,expected",
    [
        (PREFIX + "train/x.h5", "train/x.h5"),
        (PREFIX + "train/", None),
        (PREFIX, None),
        (PREFIX + "../x", "refused"),
        (PREFIX + "/etc/passwd", "refused"),
        (PREFIX + "a//b", "refused"),
        (PREFIX + "a/./b", "refused"),
        (PREFIX + "a\\..\\b", "refused"),
        (PREFIX + "../", "refused"),
    ],
)
def test_key_to_relpath(key, expected):
    if expected == "refused":
        with pytest.raises(InputError, match="outside raw_data_dir"):
            key_to_relpath(PREFIX, key, "listing")
    else:
        assert key_to_relpath(PREFIX, key, "listing") == expected


# -- archives and local sources ----------------------------------------------------------------------------------
def test_a_zip_url_is_downloaded_extracted_from_its_top_folder_and_not_fetched_twice(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url("archives/em.zip", endpoint=proxy.endpoint)
    run_download(raw, logs, source=source)
    assert local_files(raw) == s3.dataset and leftovers(raw) == []
    m = manifest(raw)
    assert m["kind"] == "zip_url" and m["url"] == source and m["archive"]["sha256"]
    assert {e["member"] for e in m["files"]} == {f"em_graphene_sim/{rel}" for rel in s3.dataset}
    full_gets = [g for g in proxy.gets("em.zip") if g.get("Range") != "bytes=0-0"]
    assert len(full_gets) == 1
    run_download(raw, logs, source=source)
    assert len([g for g in proxy.gets("em.zip") if g.get("Range") != "bytes=0-0"]) == 1
    assert "nothing to download" in logs.text()


def test_a_local_zip_with_a_nested_folder_and_junk_is_extracted(dataset, tmp_path, logs):
    members = {f"emdenoise_minibatch_v1/{rel}": data for rel, data in dataset.items()}
    members["__MACOSX/emdenoise_minibatch_v1/train/._graphene_img_noise.h5"] = b"junk"
    archive = tmp_path / "mini.zip"
    archive.write_bytes(_zip_bytes(members))
    raw = tmp_path / "raw"
    run_download(raw, logs, source=str(archive))
    assert local_files(raw) == dataset
    run_download(raw, logs, source=str(archive))
    assert "nothing to extract" in logs.text()


@pytest.mark.parametrize("bad_member,why", [("../evil.txt", "'..'"), ("/tmp/emd_abs_evil.txt", "absolute path")])
def test_a_zip_with_an_escaping_member_is_refused_and_writes_nothing(dataset, tmp_path, logs, bad_member, why):
    members = {rel: data for rel, data in dataset.items()}
    members[bad_member] = b"escaped"
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes(members))
    raw = tmp_path / "raw"
    with pytest.raises(InputError) as err:
        run_download(raw, logs, source=str(archive))
    message = err.value.message
    assert str(archive) in message and repr(bad_member) in message and why in message
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/emd_abs_evil.txt").exists()
    assert local_files(raw) == {} and leftovers(raw) == []


@pytest.mark.parametrize("bad_member,why", [("../evil.txt", "'..'"), ("/tmp/emd_abs_evil.txt", "absolute path")])
def test_a_downloaded_zip_with_an_escaping_member_is_refused_and_changes_nothing(s3, tmp_path, logs, bad_member, why):
    raw = tmp_path / "sub" / "raw"
    good = s3.url("archives/em.zip")
    run_download(raw, logs, source=good)  # a good copy is already there
    before, old_manifest = local_files(raw), (raw / "MANIFEST.json").read_bytes()
    members = {f"em_graphene_sim/{rel}": data for rel, data in s3.dataset.items()}
    members[bad_member] = b"escaped"
    s3.put("archives/", {"evil.zip": _zip_bytes(members)})
    with pytest.raises(InputError) as err:
        run_download(raw, logs, source=s3.url("archives/evil.zip"))
    message = err.value.message
    assert repr(bad_member) in message and why in message and "evil.zip" in message and "\n" not in message
    assert not (tmp_path / "sub" / "evil.txt").exists() and not Path("/tmp/emd_abs_evil.txt").exists()
    assert local_files(raw) == before and (raw / "MANIFEST.json").read_bytes() == old_manifest
    assert leftovers(raw) == []  # the refused archive is not kept


def test_a_zip_with_a_symlink_member_is_refused(dataset, tmp_path, logs):
    archive = tmp_path / "link.zip"
    archive.write_bytes(_zip_bytes(dataset, links={"train/link": "/etc/passwd"}))
    with pytest.raises(InputError, match=r"member 'train/link'.*symbolic link"):
        run_download(tmp_path / "raw", logs, source=str(archive))
    assert local_files(tmp_path / "raw") == {}


def test_a_zip_larger_than_max_archive_bytes_is_refused(dataset, tmp_path, logs):
    archive = tmp_path / "big.zip"
    archive.write_bytes(_zip_bytes(dataset))
    with pytest.raises(InputError, match="max_archive_bytes"):
        run_download(tmp_path / "raw", logs, source=str(archive), max_archive_bytes=10_000)


def test_a_zip_without_the_layout_names_what_is_missing(dataset, tmp_path, logs):
    archive = tmp_path / "half.zip"
    archive.write_bytes(_zip_bytes({rel: data for rel, data in dataset.items() if not rel.startswith("test/")}))
    with pytest.raises(InputError, match="test/graphene_img_noise.h5, test/graphene_img_clean.h5"):
        run_download(tmp_path / "raw", logs, source=str(archive))
    assert local_files(tmp_path / "raw") == {}


def test_a_local_folder_is_copied_then_found_unchanged(dataset, tmp_path, logs):
    src = tmp_path / "copy" / "em_graphene_sim"
    for rel, data in dataset.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    raw = tmp_path / "raw"
    run_download(raw, logs, source=str(tmp_path / "copy"))
    assert local_files(raw) == dataset and manifest(raw)["kind"] == "folder"
    run_download(raw, logs, source=str(tmp_path / "copy"))
    assert "nothing to copy" in logs.text()
    run_download(src, logs, source=str(src))  # the folder is raw_data_dir itself
    assert manifest(src)["file_count"] == len(dataset)


def test_synthetic_writes_the_layout_and_a_manifest_then_does_nothing(tmp_path, logs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = Path("raw")  # relative, like the default workspace paths
    settings = dict(source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    run_download(raw, logs, **settings)
    m = manifest(raw)
    assert m["kind"] == "synthetic" and m["generator"]["train_images"] == 2
    assert sorted(e["path"] for e in m["files"]) == sorted(LAYOUT)
    for entry in m["files"]:
        assert hashlib.sha256((raw / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    stamps = {rel: (raw / rel).stat().st_mtime_ns for rel in LAYOUT}
    run_download(raw, logs, **settings)
    assert "nothing to generate" in logs.text()
    assert {rel: (raw / rel).stat().st_mtime_ns for rel in LAYOUT} == stamps
    run_download(raw, logs, **{**settings, "seed": 1})
    assert manifest(raw)["generator"]["seed"] == 1
    (raw / "MANIFEST.json").write_text('{"format": "emdenoise-raw-manifest/1", "files": [{"path": "../x"}]}')
    run_download(raw, logs, **{**settings, "seed": 1})  # a manifest that makes no sense is not trusted
    assert "not an emdenoise manifest" in logs.text() and manifest(raw)["file_count"] == len(LAYOUT)


def test_synthetic_material_optics_and_generalisation_split_reach_the_files(tmp_path, logs):
    raw = tmp_path / "raw"
    settings = dict(source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    extra = dict(material="mos2", optics="uncorrected", generalisation_count=2, generalisation_material="srtio3")
    run_download(raw, logs, **settings, **extra)
    m = manifest(raw)
    assert {k: m["generator"][k] for k in extra} == extra
    gen = [f"generalisation/{name}" for name in sorted(RAW_FILES.values())]
    assert sorted(e["path"] for e in m["files"]) == sorted([*LAYOUT, *gen])
    with h5py.File(raw / "train" / RAW_FILES["noisy"], "r") as fh:
        assert fh.attrs["material"] == "mos2" and (fh["images"].attrs["voltage_kv"] >= 200).all()
    with h5py.File(raw / "generalisation" / RAW_FILES["clean"], "r") as fh:
        assert fh.attrs["material"] == "srtio3"
    run_download(raw, logs, **settings)  # no generalisation split asked: the old one goes
    assert not any((raw / rel).exists() for rel in gen)
    assert sorted(e["path"] for e in manifest(raw)["files"]) == sorted(LAYOUT)


def test_switching_source_removes_the_files_only_the_old_manifest_listed(s3, tmp_path, logs):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=s3.url())  # with inference/ TIFFs and a README
    (raw / "notes.txt").write_text("mine")  # files no manifest listed: never touched
    (raw / "inference" / "raw" / "mine.tif").write_bytes(b"mine")
    run_download(raw, logs, source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    assert sorted(local_files(raw)) == sorted(["notes.txt", "inference/raw/mine.tif", *LAYOUT])
    assert not (raw / "inference" / "truth").exists()  # emptied, so removed
    assert "removed 3 files of the previous download" in logs.text()
    assert sorted(e["path"] for e in manifest(raw)["files"]) == sorted(LAYOUT)

    run_download(raw, logs, source=s3.url())  # and back: the synthetic files are replaced
    assert {rel: data for rel, data in local_files(raw).items() if rel in s3.dataset} == s3.dataset


def test_stale_files_are_removed_only_inside_raw_data_dir(tmp_path, logs):
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"keep")
    raw.mkdir()
    (raw / "linked").symlink_to(outside)  # a folder link out of raw_data_dir
    (raw / "gone.bin").write_bytes(b"old")
    entries = [{"path": p, "size": 4, "sha256": "0" * 64} for p in ("linked/x.bin", "gone.bin", "missing.bin")]
    (raw / "MANIFEST.json").write_text(json.dumps({"format": "emdenoise-raw-manifest/1", "files": entries}))
    run_download(raw, logs, source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    assert (outside / "x.bin").read_bytes() == b"keep" and not (raw / "gone.bin").exists()


def test_a_source_that_does_not_exist_is_a_bad_parameter(tmp_path, logs):
    with pytest.raises(InputError, match=r"test.yaml: download.source: .*does not exist"):
        run_download(tmp_path / "raw", logs, source=str(tmp_path / "nowhere"))


# -- the command line, end to end ---------------------------------------------------------------------------------
def _cli(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    params = tmp_path / "p.yaml"
    params.write_text(f"download:\n  source: {source}\n  retries: 2\n")
    env = {**os.environ, RETRY_BASE_ENV: "0.01", "EMDENOISE_PROGRESS": "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "emdenoise",
            "download",
            f"--raw_data_dir={tmp_path / 'raw'}",
            f"--parameters_file={params}",
            f"--log_dir={tmp_path / 'logs'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def _error_lines(res: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in res.stderr
    return [line for line in res.stderr.splitlines() if "error:" in line]


def test_cli_download_succeeds_and_logs(s3, tmp_path):
    res = _cli(tmp_path, s3.url())
    assert res.returncode == 0, res.stderr
    assert local_files(tmp_path / "raw") == s3.dataset
    assert "wrote" in (tmp_path / "logs" / "download.log").read_text()


@pytest.mark.parametrize(
    "case,code,words",
    [("missing", EXIT_BAD_INPUT, ["404", "no-such-bucket"]), ("offline", EXIT_RUNTIME, ["offline", "synthetic"])],
)
def test_cli_download_fails_in_one_line(s3, tmp_path, case, code, words):
    source = (
        f"{s3.endpoint}/no-such-bucket/x"
        if case == "missing"
        else f"http://127.0.0.1:{_closed_port()}/{BUCKET}/{PREFIX}"
    )
    res = _cli(tmp_path, source)
    assert res.returncode == code
    errors = _error_lines(res)
    assert len(errors) == 1 and all(w in errors[0] for w in words)


def _record_moves(monkeypatch) -> list[str]:
    """The destinations the output transaction moves staged files onto, in order (atomic_path's renames into
    the staging folders are left out)."""
    moves: list[str] = []
    real = os.replace

    def replace(src, dest, **kw):
        if Path(src).parent.name == ".staging" and Path(dest).parent.name != ".staging":
            moves.append(Path(dest).name)
        return real(src, dest, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return moves


def test_the_manifest_is_moved_into_place_last_after_every_file(dataset, tmp_path, logs, monkeypatch):
    moves = _record_moves(monkeypatch)
    raw = tmp_path / "raw"
    run_download(raw, logs, source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    assert sorted(moves[:-1]) == sorted(Path(rel).name for rel in LAYOUT) and moves[-1] == "MANIFEST.json"
    moves.clear()
    src = tmp_path / "src"
    for rel, data in dataset.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    run_download(raw, logs, source=str(src))
    assert len(moves) == len(dataset) + 1 and moves[-1] == "MANIFEST.json"
    assert not list(raw.rglob(".staging"))  # the staging folders went with the commit
