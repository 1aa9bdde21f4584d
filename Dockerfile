# The emdenoise image: the task CLI in a virtualenv, run by MLCube as `IMAGE TASK --name=/mlcube_ioN/...`.
#
#   docker build -t emdenoise:0.1.0 .                       # dependencies from the package index
#   bash run/container-deps.sh && podman build --build-arg BASE_IMAGE=localhost/emdenoise-base \
#       -t emdenoise:0.1.0 .                                # offline: wheels/ and a local base image
#
# BASE_IMAGE needs python3 (3.11, the version of the pinned wheels) with the venv module; Debian's python3 +
# python3-venv (the base run/container-deps.sh makes with debootstrap) and the official python images both work.
# Build arguments: PIP_INDEX_URL / PIP_TRUSTED_HOST (another package index, e.g. a site mirror; only when
# wheels/ holds no wheels), SOURCE, REVISION, CREATED (OCI labels; run/mlcube.sh passes the git commit and time).
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the dependencies in /opt/venv. wheels/ is always there (its README.md is tracked); when it holds
# wheels, nothing is fetched from the network (pip --no-index). This stage keeps the wheels out of the final image.
# setuptools builds the package in stage 2 without network; it is pinned like requirements.txt (and
# run/container-deps.sh downloads the same version).
FROM ${BASE_IMAGE} AS deps
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
COPY requirements.txt /tmp/build/
COPY wheels /tmp/build/wheels/
RUN set -eu; \
    index_url="${PIP_INDEX_URL:-}"; trusted_host="${PIP_TRUSTED_HOST:-}"; \
    unset PIP_INDEX_URL PIP_TRUSTED_HOST; \
    python3 -m venv /opt/venv; \
    if ls /tmp/build/wheels/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheels/ folder (offline)"; \
        set -- --no-index --find-links=/tmp/build/wheels; \
    else \
        echo "installing from the package index ${index_url:-(pip's default)}"; \
        set --; \
        if [ -n "$index_url" ]; then set -- "$@" --index-url="$index_url"; fi; \
        if [ -n "$trusted_host" ]; then set -- "$@" --trusted-host="$trusted_host"; fi; \
    fi; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check "$@" \
        -r /tmp/build/requirements.txt "setuptools==84.2.1"

# Stage 2: the image.
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
# SOURCE: where the code is published (no public address yet); REVISION: the git commit ("-dirty" with
# uncommitted changes); CREATED: RFC 3339 build time. run/mlcube.sh passes the last two through mlcube.yaml.
ARG SOURCE=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="emdenoise" \
      org.opencontainers.image.description="Denoising of electron-microscopy images (em_denoise benchmark) as an MLCube" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.authors="emdenoise contributors" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

# Runs as any user (mlcube passes -u UID:GID): every place a library writes to is under /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    EMDENOISE_PROGRESS=1 \
    LANG=C.UTF-8

COPY --from=deps /opt/venv /opt/venv

# The package itself: its dependencies are in place, and the pinned setuptools builds it without network.
COPY pyproject.toml README.md /tmp/src/
COPY emdenoise /tmp/src/emdenoise
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation --quiet /tmp/src \
    && rm -rf /tmp/src \
    && emdenoise --version

WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/emdenoise"]
CMD ["--help"]
