"""The named download sources: what ``download.source`` may name besides a URL or a local path."""

from __future__ import annotations

# the public S3-compatible stores of em_graphene_sim: name -> (endpoint, bucket, prefix)
S3_SOURCES = {
    "stfc": ("https://s3.echo.stfc.ac.uk", "sciml-datasets", "ms/em_graphene_sim/"),
    "osn": ("https://sdsc.osn.xsede.org", "sciml-datasets", "ms/em_graphene_sim/"),
}
# the small zip of the old MLCube example
MINIBATCH_URL = "https://github.com/vibhatha/data_repo/raw/main/em_denoise/emdenoise_minibatch_v1.zip"
# every name download.source accepts ("synthetic": the embedded generator, no network)
NAMED_SOURCES = ("synthetic", *S3_SOURCES, "minibatch")
