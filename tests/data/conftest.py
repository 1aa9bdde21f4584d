"""Fixtures of the data tests: the dataset and its S3 server, the misbehaving proxy, the captured log, a TLS server
with a self-signed certificate, a port that never answers."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from http.server import BaseHTTPRequestHandler

import boto3
import pytest
from download_servers import (
    BUCKET,
    LAYOUT,
    PREFIX,
    S3,
    Captured,
    Proxy,
    _h5_bytes,
    _tif_bytes,
    _zip_bytes,
)
from local_http import LocalServer
from moto.server import ThreadedMotoServer

from emdenoise.data.acquire.fetch import RETRY_BASE_ENV


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, bytes]:
    """Relative path -> bytes of a small em_graphene_sim: the four HDF5 files plus inference TIFFs and a README."""
    folder = tmp_path_factory.mktemp("dataset")
    files = {
        rel: _h5_bytes(folder, f"{i}.h5", seed=i, n=4 if rel.startswith("train") else 2) for i, rel in enumerate(LAYOUT)
    }
    files["inference/raw/0001.tif"] = _tif_bytes(10)
    files["inference/truth/0001.tif"] = _tif_bytes(11)
    files["README.txt"] = b"em_graphene_sim test copy\n"
    return files


@pytest.fixture(scope="module")
def s3(dataset):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket=BUCKET)
    # A public bucket, like the real one: anyone may list it and read its objects.
    client.put_bucket_policy(
        Bucket=BUCKET,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["s3:GetObject", "s3:ListBucket"],
                        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
                    }
                ],
            }
        ),
    )
    store = S3(endpoint, client, dataset)
    store.put(PREFIX, dataset)
    store.put(PREFIX, {"train/": b""})  # a folder marker: nothing to write
    store.put("ms/em_graphene_sim_v2/", {"extra.bin": b"not ours"})  # a sibling prefix: not listed
    store.put("other/", {"unrelated.bin": b"not ours either"})
    store.put("escape/", {rel: dataset[rel] for rel in LAYOUT})
    store.put("escape/", {"../evil.txt": b"escaped"})
    store.put("mutable/", dataset)
    store.put("archives/", {"em.zip": _zip_bytes({f"em_graphene_sim/{rel}": data for rel, data in dataset.items()})})
    yield store
    server.stop()


@pytest.fixture
def proxy(s3):
    p = Proxy(s3.endpoint)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv(RETRY_BASE_ENV, "0.01")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # the servers are on 127.0.0.1


@pytest.fixture
def logs():
    log = logging.getLogger("emdenoise.test_download")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = Captured()
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


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


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """(server TLS context, certificate file) for 127.0.0.1: self-signed, so no CA bundle trusts it unless a test
    names the file in REQUESTS_CA_BUNDLE."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
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
