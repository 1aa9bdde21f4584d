"""The download task against a real S3-compatible server (moto's server mode on 127.0.0.1).

A module-wide moto server holds a small dataset in the exact em_graphene_sim layout (real HDF5 files) plus a few
extra objects. Where a test needs the network to misbehave, a small HTTP proxy written here sits between the
client and moto: it records every request and can answer 503, cut a body after N bytes, corrupt a byte, or
stall (say nothing) for longer than the client waits.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
import h5py
import numpy as np
import pytest
import requests
import tifffile
from local_http import LocalServer
from moto.server import ThreadedMotoServer

from emdenoise import params as params_mod
from emdenoise.data.archive import extract_zip
from emdenoise.tasks.context import TaskContext
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_RUNTIME, BusyError, InputError, RuntimeFailure
from emdenoise.data import fetch
from emdenoise.data.fetch import RETRY_BASE_ENV, is_md5_etag
from emdenoise.tasks import download as download_task
from emdenoise.tasks.download import find_layout_root, key_to_relpath, parse_source

BUCKET = "sciml-datasets"
PREFIX = "ms/em_graphene_sim/"
LAYOUT = ("train/graphene_img_noise.h5", "train/graphene_img_clean.h5", "test/graphene_img_noise.h5",
          "test/graphene_img_clean.h5")
ROOT = Path(__file__).resolve().parents[1]


# -- the dataset and the server ----------------------------------------------------------------------------------
def _h5_bytes(folder: Path, name: str, seed: int, n: int = 4) -> bytes:
    path = folder / name
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=np.random.default_rng(seed).random((n, 32, 32, 1), dtype=np.float32))
    return path.read_bytes()


def _tif_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(seed).random((32, 32), dtype=np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, bytes]:
    """Relative path -> bytes of a small em_graphene_sim: the four HDF5 files plus inference TIFFs and a README."""
    folder = tmp_path_factory.mktemp("dataset")
    files = {rel: _h5_bytes(folder, f"{i}.h5", seed=i, n=4 if rel.startswith("train") else 2)
             for i, rel in enumerate(LAYOUT)}
    files["inference/raw/0001.tif"] = _tif_bytes(10)
    files["inference/truth/0001.tif"] = _tif_bytes(11)
    files["README.txt"] = b"em_graphene_sim test copy\n"
    return files


def _zip_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


@dataclass
class S3:
    endpoint: str
    client: object
    dataset: dict[str, bytes]

    def url(self, prefix: str = PREFIX, endpoint: str | None = None) -> str:
        return f"{endpoint or self.endpoint}/{BUCKET}/{prefix}"

    def put(self, prefix: str, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            self.client.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data)


@pytest.fixture(scope="module")
def s3(dataset):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    # A public bucket, like the real one: anyone may list it and read its objects.
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
    store = S3(endpoint, client, dataset)
    store.put(PREFIX, dataset)
    store.put(PREFIX, {"train/": b""})                               # a folder marker: nothing to write
    store.put("ms/em_graphene_sim_v2/", {"extra.bin": b"not ours"})  # a sibling prefix: not listed
    store.put("other/", {"unrelated.bin": b"not ours either"})
    store.put("escape/", {rel: dataset[rel] for rel in LAYOUT})
    store.put("escape/", {"../evil.txt": b"escaped"})
    store.put("mutable/", dataset)
    store.put("archives/", {"em.zip": _zip_bytes({f"em_graphene_sim/{rel}": data for rel, data in dataset.items()})})
    yield store
    server.stop()


# -- a proxy that misbehaves on purpose ---------------------------------------------------------------------------
@dataclass
class Rule:
    # "status" (answer arg), "cut" (close after arg body bytes), "corrupt", "norange" (forward without the Range
    # header), "stall" (say nothing for Proxy.stall_s, then answer) or "stall_body" (send the headers and arg body
    # bytes, then say nothing for Proxy.stall_s)
    action: str
    match: str         # substring of the request path (with its query)
    times: int
    arg: int = 0


class Proxy:
    """Forwards GET requests to moto, records them, and applies the first matching rule that has uses left."""

    stall_s = 3.0      # longer than the timeouts the tests set; close() ends a stall at once

    def __init__(self, upstream: str):
        self.upstream = upstream.split("//", 1)[1]
        self.requests: list[tuple[str, str, dict]] = []
        self.rules: list[Rule] = []
        self.served: list[tuple[str, str]] = []   # (action, path) of every rule applied
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.server = LocalServer(self._handle)

    @property
    def endpoint(self) -> str:
        return self.server.url

    def add(self, action: str, match: str, times: int = 1, arg: int = 0) -> None:
        self.rules.append(Rule(action, match, times, arg))

    def gets(self, fragment: str) -> list[dict]:
        """Headers of the GET requests whose path contains ``fragment``."""
        return [headers for method, path, headers in self.requests if method == "GET" and fragment in path]

    def close(self) -> None:
        self._closing.set()
        self.server.stop()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, dict(h.headers)))
            rule = next((r for r in self.rules if r.times > 0 and r.match in h.path), None)
            if rule is not None:
                rule.times -= 1
                self.served.append((rule.action, h.path))
        if rule is not None and rule.action == "status":
            h.send_response(rule.arg)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if rule is not None and rule.action == "stall" and self._closing.wait(self.stall_s):
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        dropped = ("host", "connection") + (("range",) if rule is not None and rule.action == "norange" else ())
        conn.request(h.command, h.path, headers={k: v for k, v in h.headers.items() if k.lower() not in dropped})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if rule is not None and rule.action == "corrupt" and body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        h.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length", "server",
                                   "date"):
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if rule is not None and rule.action == "cut":
            h.wfile.write(body[:rule.arg])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if rule is not None and rule.action == "stall_body":
            h.wfile.write(body[:rule.arg])
            h.wfile.flush()
            self._closing.wait(self.stall_s)
            h.close_connection = True
            return
        h.wfile.write(body)


@pytest.fixture
def proxy(s3):
    p = Proxy(s3.endpoint)
    yield p
    p.close()


# -- running the task ---------------------------------------------------------------------------------------------
class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv(RETRY_BASE_ENV, "0.01")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)      # the servers are on 127.0.0.1


@pytest.fixture
def logs():
    log = logging.getLogger("emdenoise.test_download")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = Captured()
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


def run_download(raw_dir: Path, logs: Captured | None = None, **download):
    params = params_mod.validate({"download": download}, "test.yaml")
    ctx = TaskContext("download", params, {"parameters_file": Path("test.yaml"), "raw_data_dir": raw_dir,
                                           "log_dir": raw_dir.parent / "logs"},
                      logging.getLogger("emdenoise.test_download"))
    download_task.run(ctx)


def manifest(raw_dir: Path) -> dict:
    return json.loads((raw_dir / "MANIFEST.json").read_text())


def local_files(raw_dir: Path) -> dict[str, bytes]:
    """Every file under raw_dir except the download's own bookkeeping."""
    return {p.relative_to(raw_dir).as_posix(): p.read_bytes() for p in raw_dir.rglob("*")
            if p.is_file() and p.name not in ("MANIFEST.json", ".download.lock")}


def leftovers(raw_dir: Path) -> list[str]:
    return sorted(p.name for p in raw_dir.rglob("*") if p.name.endswith(".part") or p.name.startswith(".extract-"))


# -- S3 ----------------------------------------------------------------------------------------------------------
def test_full_download_mirrors_the_prefix_byte_for_byte_and_writes_a_manifest(s3, tmp_path, logs):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=s3.url())
    assert local_files(raw) == s3.dataset            # all objects, nothing from sibling prefixes, no marker file
    assert leftovers(raw) == []
    m = manifest(raw)
    assert (m["source"], m["kind"], m["endpoint"], m["bucket"], m["prefix"]) == (
        s3.url(), "s3", s3.endpoint, BUCKET, PREFIX)
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
    keys_under_prefix = len(s3.dataset) + 1                # + the folder marker
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
    assert [p for _, p, _ in proxy.requests if "list-type=2" not in p] == []     # listing only
    assert "nothing to download" in logs.text()
    assert (raw / "MANIFEST.json").read_bytes() == first

    damaged = raw / "test/graphene_img_clean.h5"                  # same size, one byte changed
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
    for rel, data in s3.dataset.items():                 # e.g. an earlier `aws s3 sync`: no MANIFEST.json
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
    assert local_files(raw).keys() <= {f"{rel}.part" for rel in s3.dataset}     # nothing took a final name

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
    stale.write_bytes(b"\xff" * 1000)                  # not the object's first 1000 bytes
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
    assert local_files(raw) == before                       # the old, good file is still in place
    assert (raw / "MANIFEST.json").read_bytes() == old_manifest
    assert leftovers(raw) == []                              # the corrupt .part was removed

    proxy.rules.clear()
    run_download(raw, logs, source=source)                   # the honest server: the new version arrives
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
    s3.put("vanishing/", {"test/added.bin": b"new object" * 100})                       # listed before it
    proxy.add("status", "vanishing/test/graphene_img_noise.h5", times=100, arg=404)      # ... gone once listed
    with pytest.raises(RuntimeFailure) as err:
        run_download(raw, logs, source=source)
    url = f"{proxy.endpoint}/{BUCKET}/vanishing/test/graphene_img_noise.h5"
    assert err.value.message == (f"{url}: listed but not found (HTTP 404): the bucket changed during the download; "
                                 f"run download again")
    assert err.value.exit_code == EXIT_RUNTIME
    assert local_files(raw).keys() - before.keys() == {"test/added.bin.part"}   # complete, kept for the next run
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


@pytest.mark.parametrize("action,said", [("stall", "no answer within 0.5 s"),          # before the status line
                                          ("stall_body", "no data for 0.5 s")])         # in the middle of the body
def test_a_server_that_stalls_past_the_timeout_is_retried_until_it_answers(s3, proxy, tmp_path, logs, action,
                                                                           said):
    raw = tmp_path / "raw"
    key = PREFIX + "train/graphene_img_noise.h5"
    proxy.add(action, key, times=2, arg=3000)
    started = time.monotonic()
    run_download(raw, logs, source=s3.url(endpoint=proxy.endpoint), retries=3, timeout=0.5)
    assert time.monotonic() - started < proxy.stall_s        # gave up waiting after 0.5 s, twice
    assert [a for a, _ in proxy.served] == [action, action] and len(proxy.gets(key)) == 3
    assert local_files(raw) == s3.dataset and leftovers(raw) == []
    retries = [line for line in logs.lines if key in line and "retrying" in line]
    assert len(retries) == 2 and all(said in line for line in retries)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_host_says_offline_and_points_to_synthetic(tmp_path, logs):
    with pytest.raises(RuntimeFailure) as err:
        run_download(tmp_path / "raw", logs, source=f"http://127.0.0.1:{_closed_port()}/{BUCKET}/{PREFIX}",
                     retries=2)
    message = err.value.message
    assert "offline or unreachable" in message and "source: synthetic" in message and "\n" not in message


@pytest.fixture
def silent_port():
    """A port on 127.0.0.1 that never answers a connection attempt, like a host whose packets are dropped: its
    accept queue is full (listen(0) and one connection never accepted), so the kernel drops further SYNs.

    (An "unroutable" address such as 10.255.255.1 is no substitute: what it does depends on the network the tests
    run in, from an immediate refusal to an interception that answers.)
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    filler = socket.create_connection(address, timeout=1)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(address)
        pytest.skip("this system accepts connections beyond a full accept queue")
    except TimeoutError:
        pass
    finally:
        probe.close()
    yield address[1]
    filler.close()
    server.close()


def test_a_host_that_drops_packets_is_offline_after_a_short_connect_timeout(silent_port, tmp_path, logs,
                                                                               monkeypatch):
    # Waiting for a connection is capped at CONNECT_TIMEOUT_S, apart from download.timeout (the wait for data).
    assert fetch.CONNECT_TIMEOUT_S == 10
    assert fetch.HttpClient(timeout=60).connect_timeout == 10 and fetch.HttpClient(timeout=2).connect_timeout == 2
    monkeypatch.setattr(fetch, "CONNECT_TIMEOUT_S", 0.3)      # the cap, made small to keep the test fast
    origin = f"https://127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as err:
        run_download(tmp_path / "raw", logs, source=f"{origin}/{BUCKET}/{PREFIX}", retries=3, timeout=60)
    assert time.monotonic() - started < 10                    # 3 x 0.3 s, not 3 x 60 s
    message = err.value.message
    assert message.startswith(f"cannot reach {origin} (no connection within 0.3 s) after 3 attempts")
    assert "offline or unreachable" in message and "download.source: synthetic" in message and "\n" not in message
    assert err.value.exit_code == EXIT_RUNTIME


def test_offline_rerun_uses_a_verified_copy_but_not_a_damaged_one(s3, proxy, tmp_path, logs):
    raw = tmp_path / "raw"
    source = s3.url(endpoint=proxy.endpoint)
    run_download(raw, logs, source=source)
    proxy.close()                                             # the host goes away
    run_download(raw, logs, source=source, retries=1)
    assert "using the copy already in" in logs.text()
    (raw / "README.txt").write_bytes(b"changed")
    with pytest.raises(RuntimeFailure, match="synthetic"):
        run_download(raw, logs, source=source, retries=1)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """(server TLS context, certificate file) for 127.0.0.1: self-signed, so no CA bundle trusts it unless a test
    names the file in REQUESTS_CA_BUNDLE."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, folder / "cert.pem"


@pytest.fixture(scope="module")
def tls_server(tls_cert):
    """An HTTPS server on 127.0.0.1 with the self-signed certificate, answering every GET with an empty 200."""
    def empty_ok(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    server = LocalServer(empty_ok, tls=tls_cert[0])
    yield server.url
    server.stop()


def test_tls_certificates_are_always_verified(tls_server, tmp_path, logs):
    with pytest.raises(RuntimeFailure, match=r"TLS certificate verification failed \(self-signed") as err:
        run_download(tmp_path / "raw", logs, source=f"{tls_server}/{BUCKET}/{PREFIX}", retries=3)
    assert "\n" not in err.value.message


@pytest.mark.parametrize("url,refused", [
    ("https://s3.echo.stfc.ac.uk/b/p", False), ("HTTPS://example.org/x.zip", False),
    ("http://127.0.0.1:9000/b/p", False), ("http://127.8.9.10/b", False), ("http://[::1]:9000/b", False),
    ("http://localhost:9000/b", False), ("http://LOCALHOST/b", False),
    ("http://192.0.2.1/b/p", True), ("http://example.org/x.zip", True), ("http://10.0.0.1/b", True),
    ("http://127.0.0.1.example.org/b", True), ("http://localhost.example.org/b", True),
    ("http://[::ffff:c000:201]/b", True), ("ftp://127.0.0.1/b", True), ("//example.org/b", True)])
def test_plain_http_is_allowed_only_to_this_machine(url, refused):
    assert fetch.https_required(url) is refused


def _record_requests(monkeypatch) -> list[str]:
    """The URLs of every request ``requests`` actually sends from now on (redirect hops included)."""
    sent: list[str] = []
    real_send = requests.adapters.HTTPAdapter.send

    def send(self, request, **kwargs):
        sent.append(request.url)
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return sent


@pytest.mark.parametrize("source,field", [
    ("http://192.0.2.1/sciml-datasets/ms/em_graphene_sim/", "download.source"),
    ("http://example.org/data/em.zip", "download.source"),
    ("http://127.0.0.1.example.org/sciml-datasets/ms/", "download.source"),
    ("s3://sciml-datasets/ms/em_graphene_sim/", "download.endpoint")])
def test_plain_http_to_another_host_is_refused_before_connecting(tmp_path, logs, monkeypatch, source, field):
    sent = _record_requests(monkeypatch)
    with pytest.raises(InputError) as err:
        run_download(tmp_path / "raw", logs, source=source, endpoint="http://192.0.2.1:9000")
    message = err.value.message
    url = source if field == "download.source" else "http://192.0.2.1:9000"
    assert message.startswith(f"test.yaml: {field}: {url}: https:// is required") and "\n" not in message
    assert err.value.exit_code == EXIT_BAD_INPUT and sent == []
    with fetch.HttpClient() as client, pytest.raises(InputError, match="https:// is required"):
        client.probe("http://192.0.2.1/x.zip")                           # the client refuses it too
    assert sent == []


@pytest.fixture
def redirecting_server(tls_cert, dataset, monkeypatch):
    """An HTTPS server on 127.0.0.1, trusted through REQUESTS_CA_BUNDLE, serving /em.zip (the dataset) and
    redirects: /to-http.zip -> http://192.0.2.1/em.zip, /hop.zip -> /to-http.zip, /to-https.zip ->
    https://127.0.0.1:PORT/em.zip. ``hits`` counts the GETs of each path."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_cert[1]))
    body = _zip_bytes({f"em_graphene_sim/{rel}": data for rel, data in dataset.items()})
    hits: dict[str, int] = {}
    redirects = {"/to-http.zip": "http://192.0.2.1/em.zip", "/hop.zip": "/to-http.zip",
                 "/to-https.zip": "{url}/em.zip"}

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
def test_a_redirect_from_https_to_plain_http_is_refused_before_it_is_followed(redirecting_server, dataset,
                                                                             tmp_path, logs, monkeypatch, path):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=f"{redirecting_server.url}/to-https.zip")   # a redirect to https is followed
    assert local_files(raw) == dataset and redirecting_server.hits["/em.zip"] == 2    # probe and download
    before = (raw / "MANIFEST.json").read_bytes()

    sent = _record_requests(monkeypatch)
    with pytest.raises(InputError) as err:
        run_download(raw, logs, source=f"{redirecting_server.url}{path}.zip")
    assert err.value.message == (f"{redirecting_server.url}/to-http.zip: refused to follow its redirect (HTTP 302) "
                                 f"to http://192.0.2.1/em.zip: https:// is required (plain http:// only to this "
                                 f"machine: 127.0.0.1, ::1 or localhost)")
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert not any("192.0.2.1" in url for url in sent) and sent          # asked the https server, never the other
    assert local_files(raw) == dataset and (raw / "MANIFEST.json").read_bytes() == before
    assert leftovers(raw) == []


def test_a_key_that_would_escape_raw_data_dir_is_refused(s3, tmp_path, logs):
    raw = tmp_path / "sub" / "raw"
    with pytest.raises(InputError, match=r"'escape/\.\./evil\.txt'.*outside raw_data_dir"):
        run_download(raw, logs, source=s3.url("escape/"))
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (raw / "train").exists()


@pytest.mark.parametrize("key,expected", [
    (PREFIX + "train/x.h5", "train/x.h5"), (PREFIX + "train/", None), (PREFIX, None),
    (PREFIX + "../x", "refused"), (PREFIX + "/etc/passwd", "refused"), (PREFIX + "a//b", "refused"),
    (PREFIX + "a/./b", "refused"), (PREFIX + "a\\..\\b", "refused"), (PREFIX + "../", "refused")])
def test_key_to_relpath(key, expected):
    if expected == "refused":
        with pytest.raises(InputError, match="outside raw_data_dir"):
            key_to_relpath(PREFIX, key, "listing")
    else:
        assert key_to_relpath(PREFIX, key, "listing") == expected


def test_the_layout_is_found_at_the_shallowest_folder_and_missing_files_are_named():
    assert find_layout_root(LAYOUT + ("README",), "x") == ""
    assert find_layout_root([f"a/b/{p}" for p in LAYOUT] + [f"c/{LAYOUT[0]}"], "x") == "a/b/"
    with pytest.raises(InputError, match="test/graphene_img_clean.h5 under 'd/'"):
        find_layout_root([f"d/{p}" for p in LAYOUT[:3]], "x")
    with pytest.raises(InputError, match="more than one folder"):
        find_layout_root([f"{r}/{p}" for r in ("a", "b") for p in LAYOUT], "x")


def test_md5_etags_are_told_from_multipart_ones():
    assert is_md5_etag("d41d8cd98f00b204e9800998ecf8427e")
    assert not is_md5_etag("d41d8cd98f00b204e9800998ecf8427e-3")
    assert not is_md5_etag(None) and not is_md5_etag("abc")


def test_named_sources_are_the_documented_stores():
    # From the dataset reference (docs: STFC endpoint, OSN mirror, the old MLCube example's zip), not from the code.
    stfc = parse_source("stfc", "https://unused.example.org")
    assert (stfc.kind, stfc.endpoint, stfc.bucket, stfc.prefix) == (
        "s3", "https://s3.echo.stfc.ac.uk", "sciml-datasets", "ms/em_graphene_sim/")
    osn = parse_source("osn", "https://unused.example.org")
    assert (osn.kind, osn.endpoint, osn.bucket, osn.prefix) == (
        "s3", "https://sdsc.osn.xsede.org", "sciml-datasets", "ms/em_graphene_sim/")
    mini = parse_source("minibatch", "https://unused.example.org")
    assert (mini.kind, mini.url) == (
        "zip_url", "https://github.com/vibhatha/data_repo/raw/main/em_denoise/emdenoise_minibatch_v1.zip")
    s3_url = parse_source("s3://my-bucket/some/prefix", "https://objects.example.org:8443/")
    assert (s3_url.kind, s3_url.endpoint, s3_url.bucket, s3_url.prefix) == (
        "s3", "https://objects.example.org:8443", "my-bucket", "some/prefix/")
    path_style = parse_source("https://objects.example.org/my-bucket/some/prefix", "https://unused.example.org")
    assert (path_style.endpoint, path_style.bucket, path_style.prefix) == (
        "https://objects.example.org", "my-bucket", "some/prefix/")
    assert params_mod.defaults()["download"]["endpoint"] == "https://s3.echo.stfc.ac.uk"


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
def test_a_downloaded_zip_with_an_escaping_member_is_refused_and_changes_nothing(s3, tmp_path, logs, bad_member,
                                                                                why):
    raw = tmp_path / "sub" / "raw"
    good = s3.url("archives/em.zip")
    run_download(raw, logs, source=good)                                  # a good copy is already there
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
    assert leftovers(raw) == []                                           # the refused archive is not kept


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


def test_a_lying_zip_header_cannot_get_past_the_size_limit(tmp_path):
    archive = tmp_path / "liar.zip"
    archive.write_bytes(_zip_bytes({"a.bin": b"\0" * 100_000}))
    data = bytearray(archive.read_bytes())
    # Patch the declared uncompressed size (central directory and local header) down to 10 bytes.
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[0]
    for offset in (info.header_offset + 22, data.rfind(b"PK\x01\x02") + 24):
        data[offset:offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="member 'a.bin': refused"):
        extract_zip(archive, tmp_path / "out", max_bytes=1000)
    written = tmp_path / "out" / "a.bin"
    assert not written.exists() or written.stat().st_size <= 10      # never more than the header admitted


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
    run_download(src, logs, source=str(src))                  # the folder is raw_data_dir itself
    assert manifest(src)["file_count"] == len(dataset)


def test_synthetic_writes_the_layout_and_a_manifest_then_does_nothing(tmp_path, logs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = Path("raw")                                      # relative, like the default workspace paths
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
    run_download(raw, logs, **{**settings, "seed": 1})     # a manifest that makes no sense is not trusted
    assert "not an emdenoise manifest" in logs.text() and manifest(raw)["file_count"] == len(LAYOUT)


def test_switching_source_removes_the_files_only_the_old_manifest_listed(s3, tmp_path, logs):
    raw = tmp_path / "raw"
    run_download(raw, logs, source=s3.url())                    # with inference/ TIFFs and a README
    (raw / "notes.txt").write_text("mine")                      # files no manifest listed: never touched
    (raw / "inference" / "raw" / "mine.tif").write_bytes(b"mine")
    run_download(raw, logs, source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    assert sorted(local_files(raw)) == sorted(["notes.txt", "inference/raw/mine.tif", *LAYOUT])
    assert not (raw / "inference" / "truth").exists()           # emptied, so removed
    assert "removed 3 files of the previous download" in logs.text()
    assert sorted(e["path"] for e in manifest(raw)["files"]) == sorted(LAYOUT)

    run_download(raw, logs, source=s3.url())                    # and back: the synthetic files are replaced
    assert {rel: data for rel, data in local_files(raw).items() if rel in s3.dataset} == s3.dataset


def test_stale_files_are_removed_only_inside_raw_data_dir(tmp_path, logs):
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"keep")
    raw.mkdir()
    (raw / "linked").symlink_to(outside)                        # a folder link out of raw_data_dir
    (raw / "gone.bin").write_bytes(b"old")
    entries = [{"path": p, "size": 4, "sha256": "0" * 64} for p in ("linked/x.bin", "gone.bin", "missing.bin")]
    (raw / "MANIFEST.json").write_text(json.dumps({"format": "emdenoise-raw-manifest/1", "files": entries}))
    run_download(raw, logs, source="synthetic", train_images=2, test_images=1, image_size=32, workers=1)
    assert (outside / "x.bin").read_bytes() == b"keep" and not (raw / "gone.bin").exists()


def test_a_second_download_into_the_same_folder_is_busy(tmp_path, logs):
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / ".download.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BusyError) as err:
            run_download(raw, logs, source="synthetic", train_images=1, test_images=1, image_size=32)
    assert err.value.exit_code == EXIT_BUSY


def test_a_source_that_does_not_exist_is_a_bad_parameter(tmp_path, logs):
    with pytest.raises(InputError, match=r"test.yaml: download.source: .*does not exist"):
        run_download(tmp_path / "raw", logs, source=str(tmp_path / "nowhere"))


# -- the command line, end to end ---------------------------------------------------------------------------------
def _cli(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    params = tmp_path / "p.yaml"
    params.write_text(f"download:\n  source: {source}\n  retries: 2\n")
    env = {**os.environ, RETRY_BASE_ENV: "0.01", "EMDENOISE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "emdenoise", "download", f"--raw_data_dir={tmp_path / 'raw'}",
                           f"--parameters_file={params}", f"--log_dir={tmp_path / 'logs'}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def _error_lines(res: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in res.stderr
    return [line for line in res.stderr.splitlines() if "error:" in line]


def test_cli_download_succeeds_and_logs(s3, tmp_path):
    res = _cli(tmp_path, s3.url())
    assert res.returncode == 0, res.stderr
    assert local_files(tmp_path / "raw") == s3.dataset
    assert "wrote" in (tmp_path / "logs" / "download.log").read_text()


@pytest.mark.parametrize("case,code,words", [("missing", EXIT_BAD_INPUT, ["404", "no-such-bucket"]),
                                              ("offline", EXIT_RUNTIME, ["offline", "synthetic"])])
def test_cli_download_fails_in_one_line(s3, tmp_path, case, code, words):
    source = (f"{s3.endpoint}/no-such-bucket/x" if case == "missing"
              else f"http://127.0.0.1:{_closed_port()}/{BUCKET}/{PREFIX}")
    res = _cli(tmp_path, source)
    assert res.returncode == code
    errors = _error_lines(res)
    assert len(errors) == 1 and all(w in errors[0] for w in words)
