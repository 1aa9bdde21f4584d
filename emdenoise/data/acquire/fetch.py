"""An HTTP client for public S3-compatible object stores and plain URLs, built on ``requests``.

What it does, and nothing more:

- ``list_objects``: the S3 ListObjectsV2 call (``GET /bucket?list-type=2&prefix=...``), following continuation
  tokens page by page (``max-keys`` = ``download.page_size``). Anonymous: nothing is signed.
- ``download``: a resumable GET into ``<file>.part``. When a ``.part`` already holds the first N bytes, the
  request asks for the rest with ``Range: bytes=N-``. The size is checked, and the MD5 when the ETag is a
  single-part MD5 (32 hex digits, no ``-``); the sha256 is computed on the way. The caller renames the verified
  ``.part`` into place, so a file under its final name is always complete and verified.
- Retries with exponential backoff on timeouts, lost connections and 5xx/429 answers. The first delay is
  ``EMDENOISE_RETRY_BASE_S`` seconds (default 1), doubling up to a minute. An attempt that received data
  resets the count, so a long file over a flaky link keeps going as long as it moves forward.
- Every failure becomes one line: 404/403 name the URL (:class:`InputError`), a host that cannot be reached
  says it is offline or unreachable and points to ``source: synthetic`` (:class:`RuntimeFailure`). Waiting for
  a connection is capped at ``CONNECT_TIMEOUT_S`` (10 s, or ``download.timeout`` when shorter), so a host
  whose packets are silently dropped is declared unreachable after about a minute, not 5 x 60 s.

Only verified TLS: certificates are always verified (``requests``' default, never turned off), and every URL
requested, each redirect target included, must be ``https://``; plain ``http://`` is allowed only to this
machine (127.0.0.0/8, ::1, localhost: the test servers, a local mirror), where nothing crosses a network. A
redirect elsewhere to plain http is refused before it is followed (:func:`https_required`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3

from emdenoise import __version__
from emdenoise.data.acquire.remote import CHUNK_BYTES as CHUNK_BYTES
from emdenoise.data.acquire.remote import HTTPS_REQUIRED as HTTPS_REQUIRED
from emdenoise.data.acquire.remote import (
    Fetched,
    RemoteObject,
    child_text,
    clean_etag,
    https_required,
    is_md5_etag,
    parse_listing,
)
from emdenoise.errors import InputError, RuntimeFailure

RETRY_BASE_ENV = "EMDENOISE_RETRY_BASE_S"
DEFAULT_RETRY_BASE_S = 1.0
MAX_BACKOFF_S = 60.0
CONNECT_TIMEOUT_S = 10.0
OFFLINE_HINT = "to work without a network set `download.source: synthetic`"

_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_T = TypeVar("_T")


def retry_base_s() -> float:
    """The first retry delay in seconds (tests make it tiny with ``EMDENOISE_RETRY_BASE_S``)."""
    try:
        return max(0.0, float(os.environ.get(RETRY_BASE_ENV, DEFAULT_RETRY_BASE_S)))
    except ValueError:
        return DEFAULT_RETRY_BASE_S


_REASONS = (
    re.compile(r"certificate verify failed: ([^'(\]]+)"),
    _ERRNO_TEXT,
    re.compile(
        r"(Name or service not known|Temporary failure in name resolution|nodename nor servname provided|"
        r"No address associated with hostname|timed out|Connection reset by peer|RemoteDisconnected)"
    ),
)


def _short_reason(exc: BaseException) -> str:
    """'Connection refused' rather than a three-line urllib3 repr."""
    text = str(exc)
    for pattern in _REASONS:
        found = pattern.search(text)
        if found:
            return found.group(1).strip()
    return exc.__class__.__name__


class Unreachable(RuntimeFailure):
    """The host never answered: offline, DNS failure, connection refused."""


class NotFound(InputError):
    """The server answered 404."""


class _Transient(Exception):
    """A failure worth retrying: a timeout, a lost connection, a 5xx answer."""

    def __init__(self, kind: str, reason: str, progressed: bool = False):
        super().__init__(reason)
        self.kind = kind  # "connect", "timeout", "broken" or "server"
        self.reason = reason
        self.progressed = progressed


class _PartFile:
    """A ``.part`` file and the running digests of its bytes (those already there are hashed on opening)."""

    def __init__(self, path: Path):
        self.path = path
        self.md5, self.sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        self.length = 0
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    self._digest(chunk)
        self.resumed_from = self.length

    def _digest(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha.update(chunk)
        self.length += len(chunk)

    def append(self, fh, chunk: bytes) -> None:
        try:
            fh.write(chunk)
        except OSError as exc:
            raise RuntimeFailure(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self._digest(chunk)

    def reset(self) -> None:
        """Forget the bytes so far and start again from zero."""
        self.path.unlink(missing_ok=True)
        self.md5, self.sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        self.length = 0


class HttpClient:
    """One ``requests`` session with the retry policy, the error wording and the S3 calls.

    ``retries``: attempts per request (1 means no retry); ``timeout``: seconds to wait for the next bytes of an
    answer, and for a connection up to ``CONNECT_TIMEOUT_S``.
    """

    def __init__(self, retries: int = 5, timeout: float = 60.0, log: logging.Logger | None = None):
        self.retries = max(1, int(retries))
        self.timeout = float(timeout)
        self.connect_timeout = min(CONNECT_TIMEOUT_S, self.timeout)
        self.log = log or logging.getLogger("emdenoise")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"emdenoise/{__version__}"
        self.session.hooks["response"].append(self._refuse_insecure_redirect)
        self._answered: set[str] = set()  # origins that have answered at least once

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _refuse_insecure_redirect(self, resp: requests.Response, *args, **kwargs) -> requests.Response:
        """A response hook, run on each answer before ``requests`` follows a redirect: a redirect to a URL that
        :func:`https_required` refuses stops the request there (verified TLS is never traded for plain http)."""
        target = self.session.get_redirect_target(resp)
        if target is not None:
            target = urljoin(resp.url, target)
            if https_required(target):
                resp.close()
                raise InputError(
                    f"{resp.url}: refused to follow its redirect (HTTP {resp.status_code}) to {target}: "
                    f"{HTTPS_REQUIRED}"
                )
        return resp

    # -- the retry loop and the error wording ------------------------------------------------------------------
    def _with_retries(self, url: str, attempt: Callable[[], _T]) -> _T:
        failures = 0
        while True:
            try:
                return attempt()
            except _Transient as exc:
                failures = 1 if exc.progressed else failures + 1
                if failures >= self.retries:
                    raise self._give_up(url, exc, failures) from None
                delay = min(MAX_BACKOFF_S, retry_base_s() * 2 ** (failures - 1))
                self.log.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)", url, exc.reason, delay, failures + 1, self.retries
                )
                time.sleep(delay)

    def _give_up(self, url: str, exc: _Transient, attempts: int) -> RuntimeFailure:
        origin = _origin(url)
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if exc.kind == "connect" and origin not in self._answered:
            return Unreachable(
                f"cannot reach {origin} ({exc.reason}) after {tries}: the host is offline or "
                f"unreachable from here; {OFFLINE_HINT}"
            )
        if exc.kind == "timeout":
            return RuntimeFailure(
                f"{url}: no answer within {self.timeout:g} s after {tries} (download.timeout); "
                f"the host may be offline or overloaded; {OFFLINE_HINT}"
            )
        if exc.kind == "server":
            return RuntimeFailure(f"{url}: server error {exc.reason} after {tries}; try again later")
        return RuntimeFailure(
            f"{url}: connection lost ({exc.reason}) after {tries}; run download again to resume where it stopped"
        )

    def _send(
        self, method: str, url: str, *, params: dict | None = None, headers: dict | None = None, stream: bool = False
    ) -> requests.Response:
        """One request. Transient failures raise :class:`_Transient`; 4xx answers raise one-line errors."""
        if https_required(url):
            raise InputError(f"{url}: refused: {HTTPS_REQUIRED}")
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                headers=headers,
                stream=stream,
                timeout=(self.connect_timeout, self.timeout),
                allow_redirects=True,
            )
        except requests.exceptions.SSLError as exc:
            raise RuntimeFailure(
                f"{url}: TLS certificate verification failed ({_short_reason(exc)}); emdenoise "
                f"always verifies certificates: fix the system's CA certificates or set "
                f"REQUESTS_CA_BUNDLE"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise _Transient("connect", f"no connection within {self.connect_timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise _Transient("connect", _short_reason(exc)) from None
        except requests.exceptions.Timeout:
            raise _Transient("timeout", f"no answer within {self.timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            raise InputError(
                f"{url}: cannot request this URL ({exc.__class__.__name__}: {exc}); check download.source"
            ) from None
        self._answered.add(_origin(url))
        self._answered.add(_origin(resp.url))
        status = resp.status_code
        if status < 400 or status == 416:
            return resp
        code = _s3_error_code(resp) if method != "HEAD" else None
        resp.close()
        detail = f"HTTP {status} {resp.reason or ''}".rstrip() + (f", {code}" if code else "")
        if status >= 500 or status == 429:
            raise _Transient("server", detail)
        if status == 404:
            raise NotFound(f"{url}: not found ({detail}); check download.source")
        if status in (401, 403):
            raise InputError(
                f"{url}: access denied ({detail}); the data must be readable anonymously: check download.source"
            )
        raise RuntimeFailure(f"{url}: unexpected answer ({detail})")

    # -- S3 ------------------------------------------------------------------------------------------------------
    def list_objects(
        self, endpoint: str, bucket: str, prefix: str, page_size: int = 1000
    ) -> tuple[list[RemoteObject], int]:
        """Every object under ``prefix`` (ListObjectsV2, path-style), and the number of pages it took."""
        url = f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}"
        objects: list[RemoteObject] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        pages = 0
        while True:
            params = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
            if token:
                params["continuation-token"] = token
            root = self._with_retries(url, functools.partial(self._get_xml, url, params))
            pages += 1
            page, token = parse_listing(root, url, pages, seen_tokens)
            objects += page
            if token is None:
                return objects, pages
            seen_tokens.add(token)

    def _get_xml(self, url: str, params: dict) -> ET.Element:
        resp = self._send("GET", url, params=params)
        try:
            body = resp.content
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _Transient("broken", _short_reason(exc)) from None
        try:
            return ET.fromstring(body)
        except ET.ParseError as exc:
            raise InputError(
                f"{url}: the answer is not an S3 bucket listing (not XML: {exc}); check download.source"
            ) from None

    # -- plain GET and HEAD --------------------------------------------------------------------------------------
    def probe(self, url: str) -> tuple[int | None, str | None]:
        """(size, ETag) of a URL, either None when the server does not say.

        Asks for the first byte only (``Range: bytes=0-0``) rather than sending HEAD: public buckets that allow
        GET do not always allow HEAD to anonymous clients, and the 206 answer carries the full size.
        """

        def attempt():
            resp = self._send("GET", url, headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"}, stream=True)
            resp.close()
            if resp.status_code not in (200, 206):
                return None, None
            return _total_size(resp), clean_etag(resp.headers.get("ETag"))

        return self._with_retries(url, attempt)

    def download(self, url: str, part: Path, size: int | None = None, etag: str | None = None, bar=None) -> Fetched:
        """GET ``url`` into ``part``, resuming from the bytes already there, and verify it.

        ``size`` and ``etag`` are what the listing promised (None: take them from the answer). Raises
        :class:`RuntimeFailure` when the bytes do not match; a corrupt ``.part`` is removed, a merely incomplete
        one is kept so that the next run resumes it.
        """
        part.parent.mkdir(parents=True, exist_ok=True)
        for pass_ in ("resume", "afresh"):
            state = _PartFile(part)
            if size is not None and state.length > size:
                state.reset()
            if bar is not None and state.length:
                bar.update(state.length)
            got_etag = self._with_retries(url, functools.partial(self._fetch_rest, url, state, size, etag, bar))
            etag_now = got_etag or etag
            if size is not None and state.length != size:
                got = state.length
                self._rewind(state, bar)
                raise RuntimeFailure(f"{url}: got {got} bytes, the listing says {size}")
            got_md5 = state.md5.hexdigest()
            if not is_md5_etag(etag_now) or got_md5 == etag_now:
                return Fetched(part, state.length, got_md5, state.sha.hexdigest(), etag_now)
            self._rewind(state, bar)
            # Corrupt. When part of it came from an earlier run, that part may be the culprit: retry once afresh.
            if pass_ == "resume" and state.resumed_from:
                self.log.warning(
                    "%s: MD5 does not match the ETag after resuming; downloading it again from the start", url
                )
                continue
            raise RuntimeFailure(
                f"{url}: MD5 {got_md5} does not match the ETag {etag_now}: the download was "
                f"corrupted in transit; removed {part.name}, run download again"
            )
        raise AssertionError("unreachable")

    def _fetch_rest(self, url: str, state: _PartFile, size: int | None, etag: str | None, bar) -> str | None:
        """One attempt: request the missing bytes and append them. Returns the answer's ETag."""
        for _ in range(2):  # a second round only after the server refused our Range
            if size is not None and state.length == size:
                return None
            headers = {"Accept-Encoding": "identity"}
            if state.length:
                headers["Range"] = f"bytes={state.length}-"
            resp = self._send("GET", url, headers=headers, stream=True)
            with resp:
                got_etag = clean_etag(resp.headers.get("ETag"))
                if etag and got_etag and got_etag != etag:
                    self._rewind(state, bar)
                    raise RuntimeFailure(
                        f"{url}: the object changed on the server since it was listed (ETag "
                        f"{etag} -> {got_etag}); run download again"
                    )
                total = _total_size(resp)
                if resp.status_code == 416:  # asked beyond the end: complete already, or a stale .part
                    if total is not None and total == state.length and size in (None, total):
                        return got_etag
                    self._rewind(state, bar)
                    continue
                if resp.status_code == 206:
                    start = _range_start(resp)
                    if start != state.length:
                        self._rewind(state, bar)
                        continue
                elif state.length:  # 200: the server sent the whole object, start over
                    self.log.info("%s: the server does not resume; downloading from the start", url)
                    self._rewind(state, bar)
                expected = size if size is not None else total
                self._stream(resp, url, state, expected, bar)
                return got_etag
        raise _Transient("broken", "the server would not resume the download")

    @staticmethod
    def _rewind(state: _PartFile, bar) -> None:
        if bar is not None and state.length:
            bar.update(-state.length)
        state.reset()

    def _stream(self, resp: requests.Response, url: str, state: _PartFile, expected: int | None, bar) -> None:
        start = state.length
        with open(state.path, "ab") as fh:
            while True:
                try:
                    # read1 hands over whatever has arrived, so bytes before a cut are kept for the resume.
                    chunk = resp.raw.read1(CHUNK_BYTES, decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                    fh.flush()
                    if "timed out" in str(exc).lower():
                        kind, reason = "timeout", f"no data for {self.timeout:g} s"
                    else:
                        kind, reason = "broken", _short_reason(exc)
                    raise _Transient(kind, reason, progressed=state.length > start) from None
                if not chunk:
                    break
                if expected is not None and state.length + len(chunk) > expected:
                    fh.close()
                    self._rewind(state, bar)
                    raise RuntimeFailure(f"{url}: the server sent more than the expected {expected} bytes")
                state.append(fh, chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if expected is not None and state.length < expected:
            raise _Transient(
                "broken", f"connection closed after {state.length} of {expected} bytes", progressed=state.length > start
            )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _s3_error_code(resp: requests.Response) -> str | None:
    """The <Code> of an S3 error answer (NoSuchBucket, AccessDenied ...), if the body is one."""
    try:
        body = resp.content[:65536]
        return child_text(ET.fromstring(body), "Code") or None
    except Exception:  # not XML, truncated, not an S3 error: the status line says enough
        return None


def _total_size(resp: requests.Response) -> int | None:
    """The object's full size: from ``Content-Range: bytes a-b/TOTAL`` on 206/416, else Content-Length."""
    content_range = resp.headers.get("Content-Range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length", "")
    return int(length) if resp.status_code == 200 and length.isdigit() else None


def _range_start(resp: requests.Response) -> int | None:
    found = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(found.group(1)) if found else None
