"""Where the raw data come from: the named download sources and :func:`parse_source` for ``download.source``.

``download.source`` may be

- ``synthetic``: the embedded generator (:mod:`emdenoise.data.simulate.pairs`), no network;
- ``abtem``: the same specimens (or ``download.structure``) imaged by abTEM's multislice
  (:mod:`emdenoise.data.simulate.abtem_source`, the optional extra ``emdenoise[abtem]``), no network;
- ``stfc`` / ``osn``: the public S3-compatible stores (bucket ``sciml-datasets``, prefix ``ms/em_graphene_sim/``);
- ``minibatch``: the small zip of the old MLCube example;
- ``https://host/bucket/prefix`` (path-style S3), ``s3://bucket/prefix`` (with ``download.endpoint``), or any
  ``https://.../*.zip`` (plain ``http://`` only to this machine, see
  :func:`emdenoise.data.acquire.fetch.https_required`);
- a local folder or ``.zip`` holding the layout;
- ``micrographs:PATH``: a local folder or ``.zip`` of one's own micrographs, in any format ``denoise`` reads
  (TIFF stacks, MRC, HDF5, NPY, PNG, ...), noisy only: copied into ``raw_data_dir/micrographs/`` as they are,
  for preprocess to tile into noisy-only splits (training with ``train.supervision`` other than ``clean``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from emdenoise.errors import InputError

# the public S3-compatible stores of em_graphene_sim: name -> (endpoint, bucket, prefix)
S3_SOURCES = {
    "stfc": ("https://s3.echo.stfc.ac.uk", "sciml-datasets", "ms/em_graphene_sim/"),
    "osn": ("https://sdsc.osn.xsede.org", "sciml-datasets", "ms/em_graphene_sim/"),
}
# the small zip of the old MLCube example
MINIBATCH_URL = "https://github.com/vibhatha/data_repo/raw/main/em_denoise/emdenoise_minibatch_v1.zip"
# every name download.source accepts ("synthetic": the embedded generator; "abtem": multislice; no network)
NAMED_SOURCES = ("synthetic", "abtem", *S3_SOURCES, "minibatch")
# download.source = MICROGRAPHS_PREFIX + path: a folder or .zip of the user's own noisy micrographs
MICROGRAPHS_PREFIX = "micrographs:"
# the kinds of Source
KINDS = ("synthetic", "abtem", "s3", "zip_url", "zip_file", "folder")


@dataclass(frozen=True)
class Source:
    """Where the data come from, parsed from ``download.source``."""

    kind: str  # one of KINDS
    name: str  # the parameter as given
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    url: str = ""
    path: Path | None = None
    micrographs: bool = False  # a micrographs: source (own noisy frames, not the em_graphene_sim layout)

    def location(self) -> dict[str, Any]:
        """What identifies the source in MANIFEST.json."""
        if self.kind == "s3":
            return {"endpoint": self.endpoint, "bucket": self.bucket, "prefix": self.prefix}
        if self.kind == "zip_url":
            return {"url": self.url}
        if self.kind in ("zip_file", "folder"):
            return {"path": str(self.path), **({"micrographs": True} if self.micrographs else {})}
        return {}

    def describe(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"
        return self.url or str(self.path or self.name)

    @property
    def local_path(self) -> Path:
        """The folder or zip of a local source."""
        if self.path is None:
            raise ValueError(f"a {self.kind} source has no local path")
        return self.path


def parse_source(value: str, endpoint: str, where: Any = "parameters") -> Source:
    """Turn ``download.source`` (and ``download.endpoint`` for ``s3://``) into a :class:`Source`.

    A value that names nothing usable is a one-line :class:`InputError` naming ``where`` and the field.
    """
    from emdenoise.data.acquire.fetch import HTTPS_REQUIRED, https_required

    def bad(expected: str) -> InputError:
        return InputError.at(where, "download.source", f"expected {expected}, got {value!r}")

    if value in ("synthetic", "abtem"):
        return Source(value, value)
    if value in S3_SOURCES:
        ep, bucket, prefix = S3_SOURCES[value]
        return Source("s3", value, endpoint=ep, bucket=bucket, prefix=prefix)
    if value == "minibatch":
        return Source("zip_url", value, url=MINIBATCH_URL)
    if value.startswith(MICROGRAPHS_PREFIX):
        text = value[len(MICROGRAPHS_PREFIX) :]
        found = Path(text).expanduser().resolve() if text else None
        if found is None or not (found.is_dir() or (found.is_file() and found.suffix.lower() == ".zip")):
            raise bad(f"{MICROGRAPHS_PREFIX}PATH with PATH an existing folder or .zip of micrographs")
        return Source("folder" if found.is_dir() else "zip_file", value, path=found, micrographs=True)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise bad("a URL with a host, e.g. https://host/bucket/prefix")
        if https_required(value):
            raise InputError.at(where, "download.source", f"{value}: {HTTPS_REQUIRED}")
        if parts.path.lower().endswith(".zip"):
            return Source("zip_url", value, url=value)
        bucket, _, prefix = unquote(parts.path).lstrip("/").partition("/")
        if not bucket or parts.query:
            raise bad("a path-style S3 URL https://host/bucket/prefix, or a URL of a .zip")
        return Source("s3", value, endpoint=f"{scheme}://{parts.netloc}", bucket=bucket, prefix=_normal_prefix(prefix))
    if scheme == "s3":
        if not parts.netloc:
            raise bad("s3://bucket/prefix")
        ep_parts = urlsplit(endpoint)
        if ep_parts.scheme.lower() not in ("http", "https") or not ep_parts.netloc:
            raise InputError.at(where, "download.endpoint", f"expected an https:// URL, got {endpoint!r}")
        if https_required(endpoint):
            raise InputError.at(where, "download.endpoint", f"{endpoint}: {HTTPS_REQUIRED}")
        return Source(
            "s3", value, endpoint=endpoint.rstrip("/"), bucket=parts.netloc, prefix=_normal_prefix(unquote(parts.path))
        )
    if scheme == "file":
        path = Path(unquote(parts.path))
    elif scheme and len(scheme) > 1:
        raise bad("synthetic, stfc, osn, minibatch, an http(s):// or s3:// URL, or a local folder or .zip")
    else:
        path = Path(value).expanduser()
    path = path.resolve()
    if path.is_dir():
        return Source("folder", value, path=path)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise bad("a folder or a .zip file")
        return Source("zip_file", value, path=path)
    raise bad(f"an existing folder or .zip ({path} does not exist)")


def _normal_prefix(prefix: str) -> str:
    """'ms/em_graphene_sim' -> 'ms/em_graphene_sim/' (so that a sibling 'ms/em_graphene_sim_v2/' is not listed)."""
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"
