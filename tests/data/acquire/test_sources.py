"""The named download sources and the parsing of download.source."""

from __future__ import annotations

from emdenoise.config import params as params_mod
from emdenoise.data.acquire.sources import parse_source


def test_named_sources_are_the_documented_stores():
    # From the dataset reference (docs: STFC endpoint, OSN mirror, the old MLCube example's zip), not from the code.
    stfc = parse_source("stfc", "https://unused.example.org")
    assert (stfc.kind, stfc.endpoint, stfc.bucket, stfc.prefix) == (
        "s3",
        "https://s3.echo.stfc.ac.uk",
        "sciml-datasets",
        "ms/em_graphene_sim/",
    )
    osn = parse_source("osn", "https://unused.example.org")
    assert (osn.kind, osn.endpoint, osn.bucket, osn.prefix) == (
        "s3",
        "https://sdsc.osn.xsede.org",
        "sciml-datasets",
        "ms/em_graphene_sim/",
    )
    mini = parse_source("minibatch", "https://unused.example.org")
    assert (mini.kind, mini.url) == (
        "zip_url",
        "https://github.com/vibhatha/data_repo/raw/main/em_denoise/emdenoise_minibatch_v1.zip",
    )
    s3_url = parse_source("s3://my-bucket/some/prefix", "https://objects.example.org:8443/")
    assert (s3_url.kind, s3_url.endpoint, s3_url.bucket, s3_url.prefix) == (
        "s3",
        "https://objects.example.org:8443",
        "my-bucket",
        "some/prefix/",
    )
    path_style = parse_source("https://objects.example.org/my-bucket/some/prefix", "https://unused.example.org")
    assert (path_style.endpoint, path_style.bucket, path_style.prefix) == (
        "https://objects.example.org",
        "my-bucket",
        "some/prefix/",
    )
    assert params_mod.defaults().download.endpoint == "https://s3.echo.stfc.ac.uk"
