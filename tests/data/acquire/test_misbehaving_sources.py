"""Download sources answering 403, HTML instead of a bucket listing, or stopping mid-stream; listed keys that would
land outside raw_data_dir."""

from __future__ import annotations

import io
import os
import socket
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from local_http import LocalServer
from support import final_files, one_error, params_file, run_here, temporaries, write_raw

from emdenoise.data.acquire.run import key_to_relpath
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, InputError

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
XHTML = b"<html><head><title>Sign in</title></head><body><p>Please sign in</p></body></html>"
HTML = b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Portal</title></head><body>Login<br></body></html>'


class Server:
    """A small HTTP server: S3-ish buckets that answer wrongly, and a zip that supports Range and can be told to
    stop mid-stream."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self.cut = True  # em.zip: send half of it, then close; requests to resume get nothing
        self.ranges: list[str | None] = []
        self.httpd = LocalServer(self.handle)
        self.url = self.httpd.url

    def close(self):
        self.httpd.stop()

    @staticmethod
    def send(h, status: int, body: bytes, content_type: str = "application/xml", headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h):
        path = h.path.split("?", 1)[0]
        if path == "/denied":
            return self.send(h, 403, ACCESS_DENIED)
        if path == "/xhtml":
            return self.send(h, 200, XHTML, "text/html")
        if path == "/html":
            return self.send(h, 200, HTML, "text/html")
        if path == "/files/page.zip":
            return self.send(h, 200, HTML, "text/html")
        if path != "/files/em.zip":
            return self.send(h, 404, b"")
        data, asked = self.archive, h.headers.get("Range")
        if asked != "bytes=0-0":
            self.ranges.append(asked)
        start = int(asked.split("=")[1].split("-")[0]) if asked else 0
        end = len(data) - 1 if asked != "bytes=0-0" else 0
        status = 206 if asked else 200
        headers = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
        if asked:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        if not self.cut or asked == "bytes=0-0":
            return self.send(h, status, body, "application/zip", headers)
        h.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body[: len(body) // 2] if not asked else b"")  # then the connection drops
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def layout_zip(tmp_path_factory) -> tuple[bytes, dict[str, bytes]]:
    folder = write_raw(tmp_path_factory.mktemp("zip") / "em", 6, 3, seed=7)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return buf.getvalue(), files


@pytest.fixture
def server(layout_zip):
    srv = Server(layout_zip[0])
    yield srv
    srv.close()


@pytest.mark.parametrize(
    "source,code,words",
    [
        ("denied/data", EXIT_BAD_INPUT, ["/denied", "access denied", "403", "AccessDenied"]),
        ("xhtml/data", EXIT_BAD_INPUT, ["/xhtml", "not an S3 bucket listing", "<html>"]),
        ("html/data", EXIT_BAD_INPUT, ["/html", "not an S3 bucket listing", "not XML"]),
        ("files/page.zip", EXIT_BAD_INPUT, ["page.zip", "expected a readable zip archive"]),
    ],
)
def test_a_source_answering_403_or_html_is_one_line_and_changes_nothing(tmp_path, capsys, server, source, code, words):
    raw = write_raw(tmp_path / "raw", 4, 2)  # an earlier download
    old = final_files(raw)
    params = params_file(tmp_path / "p.yaml", download={"source": f"{server.url}/{source}", "retries": 2})
    got, err = run_here(
        capsys, "download", {"raw_data_dir": raw, "parameters_file": params, "log_dir": tmp_path / "logs"}
    )
    one_error(got, err, code, *words)
    assert final_files(raw) == old and temporaries(raw) == []


def test_a_download_that_stops_mid_stream_fails_in_one_line_then_resumes(tmp_path, capsys, server, layout_zip):
    raw = tmp_path / "raw"
    params = params_file(tmp_path / "p.yaml", download={"source": f"{server.url}/files/em.zip", "retries": 2})
    paths = {"raw_data_dir": raw, "parameters_file": params, "log_dir": tmp_path / "logs"}
    code, err = run_here(capsys, "download", paths)
    one_error(code, err, EXIT_RUNTIME, "em.zip", "connection lost", "run download again")
    part = raw / "em.zip.part"
    assert part.stat().st_size == len(layout_zip[0]) // 2  # what arrived is kept for the next run ...
    assert final_files(raw) == {}  # ... and nothing took a final name
    server.cut = False
    server.ranges.clear()
    code, err = run_here(capsys, "download", paths)
    assert code == 0, err
    assert server.ranges == [f"bytes={len(layout_zip[0]) // 2}-"]  # resumed, not started again
    got = final_files(raw)
    assert {rel: got[rel] for rel in layout_zip[1]} == layout_zip[1] and temporaries(raw) == []


@settings(max_examples=300, deadline=None)
@given(rest=st.text(alphabet="a./\\\x00", max_size=12))
def test_no_listed_key_can_land_outside_raw_data_dir(rest):
    prefix = "ms/em/"
    try:
        rel = key_to_relpath(prefix, prefix + rest, "listing")
    except InputError as exc:
        assert "\n" not in exc.message and "outside raw_data_dir" in exc.message
        return
    if rel is not None:
        assert os.path.normpath(os.path.join("/raw", rel)).startswith("/raw/")
        assert "\x00" not in rel
