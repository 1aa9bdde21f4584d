# The emdenoise image: the task CLI in a virtualenv, run by MLCube as `IMAGE TASK --name=/mlcube_ioN/...`.
#
#   docker build -t emdenoise:0.1.0 .                       # dependencies from the package index
#   bash run/container-deps.sh && podman build --build-arg BASE_IMAGE=localhost/emdenoise-base \
#       -t emdenoise:0.1.0 .                                # offline: wheels/ and a local base image
#
# BASE_IMAGE needs python3 (3.11, the version of the pinned wheels) with the venv module; Debian's python3 +
# python3-venv (the base run/container-deps.sh makes with debootstrap) and the official python images both work.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the dependencies in /opt/venv. `wheel[s]` matches the optional wheels/ folder; when it holds wheels,
# nothing is fetched from the network (pip --no-index). This stage keeps the wheels out of the final image.
FROM ${BASE_IMAGE} AS deps
COPY requirements.txt wheel[s] /tmp/build/
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if ls /tmp/build/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheels/ folder (offline)"; \
        set -- --no-index --find-links=/tmp/build; \
    else \
        echo "installing from the package index"; \
        set --; \
    fi; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check "$@" \
        -r /tmp/build/requirements.txt "setuptools>=70.1"

# Stage 2: the image.
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="emdenoise" \
      org.opencontainers.image.description="Denoising of electron-microscopy images (em_denoise benchmark) as an MLCube" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

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

# The package itself: its dependencies are in place, and setuptools>=70.1 builds it without network.
COPY pyproject.toml README.md /tmp/src/
COPY emdenoise /tmp/src/emdenoise
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation --quiet /tmp/src \
    && rm -rf /tmp/src \
    && emdenoise --version

WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/emdenoise"]
CMD ["--help"]
