"""The servers and helpers of the download tests: a small em_graphene_sim in real HDF5 files on a moto S3 server
(127.0.0.1), a proxy that misbehaves on purpose, and running the download task in-process."""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import stat
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import h5py
import numpy as np
import tifffile
from local_http import LocalServer

from emdenoise.config import params as params_mod
from emdenoise.lock import LOCK_NAME
from emdenoise.runtime.task import TaskContext
from emdenoise.tasks import download as download_task

BUCKET = "sciml-datasets"
PREFIX = "ms/em_graphene_sim/"
LAYOUT = (
    "train/graphene_img_noise.h5",
    "train/graphene_img_clean.h5",
    "test/graphene_img_noise.h5",
    "test/graphene_img_clean.h5",
)
ROOT = Path(__file__).resolve().parents[2]


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


# -- a proxy that misbehaves on purpose ---------------------------------------------------------------------------
@dataclass
class Rule:
    # "status" (answer arg), "cut" (close after arg body bytes), "corrupt", "norange" (forward without the Range
    # header), "stall" (say nothing for Proxy.stall_s, then answer) or "stall_body" (send the headers and arg body
    # bytes, then say nothing for Proxy.stall_s)
    action: str
    match: str  # substring of the request path (with its query)
    times: int
    arg: int = 0


class Proxy:
    """Forwards GET requests to moto, records them, and applies the first matching rule that has uses left."""

    stall_s = 3.0  # longer than the timeouts the tests set; close() ends a stall at once

    def __init__(self, upstream: str):
        self.upstream = upstream.split("//", 1)[1]
        self.requests: list[tuple[str, str, dict]] = []
        self.rules: list[Rule] = []
        self.served: list[tuple[str, str]] = []  # (action, path) of every rule applied
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
            if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length", "server", "date"):
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if rule is not None and rule.action == "cut":
            h.wfile.write(body[: rule.arg])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if rule is not None and rule.action == "stall_body":
            h.wfile.write(body[: rule.arg])
            h.wfile.flush()
            self._closing.wait(self.stall_s)
            h.close_connection = True
            return
        h.wfile.write(body)


# -- running the task ---------------------------------------------------------------------------------------------
class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


def run_download(raw_dir: Path, logs: Captured | None = None, **download):
    params = params_mod.validate({"download": download}, "test.yaml")
    ctx = TaskContext(
        "download",
        params,
        {"parameters_file": Path("test.yaml"), "raw_data_dir": raw_dir, "log_dir": raw_dir.parent / "logs"},
        logging.getLogger("emdenoise.test_download"),
    )
    download_task.run(ctx)


def manifest(raw_dir: Path) -> dict:
    return json.loads((raw_dir / "MANIFEST.json").read_text())


def local_files(raw_dir: Path) -> dict[str, bytes]:
    """Every file under raw_dir except the download's own bookkeeping."""
    return {
        p.relative_to(raw_dir).as_posix(): p.read_bytes()
        for p in raw_dir.rglob("*")
        if p.is_file() and p.name not in ("MANIFEST.json", LOCK_NAME)
    }


def leftovers(raw_dir: Path) -> list[str]:
    return sorted(p.name for p in raw_dir.rglob("*") if p.name.endswith(".part") or p.name.startswith(".extract-"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
