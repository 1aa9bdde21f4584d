"""The real image, end to end: built with podman THROUGH `mlcube run` from the Dockerfile (base image and wheels
made by run/container-deps.sh, so no registry is needed), then download, preprocess, train and test with the
quickstart parameters in containers, as a non-root user, then the image saved as a docker-archive tar for
Singularity/Apptainer. A second build takes the dependencies from a package index instead of wheels/: a local
PEP 503 index on 127.0.0.1 that serves the same wheels.

Marked `container` (minutes). Nothing is skipped: no podman, or a podman that cannot start a container, FAILS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.parse
from pathlib import Path

import pytest

import emdenoise
from emdenoise import cli
from fake_tools import ROOT, find_mlcube, read_calls, scratch_dir, write_tool
from local_http import LocalServer

pytestmark = pytest.mark.container

IMAGE = f"emdenoise:{emdenoise.__version__}"
CHAIN = ("download", "preprocess", "train", "test")
CONTAINERS_CONF = ROOT / ".cache" / "containers" / "containers.conf"
BASE_IMAGE = "localhost/emdenoise-base"
PARAMS = "parameters/quickstart.parameters.yaml"   # the shipped file, as a user runs it
# CI runs as root, so "owned by the invoking user" would compare root with root. The chain runs with a fake `id`
# first on PATH that says 4242 for `id -u` / `id -g`, as a non-root user's would: mlcube's `-u $(id -u):$(id -g)`
# then runs the containers as 4242, and everything they write must belong to 4242, not root.
USER_ID = 4242
_FAKE_ID = """#!/bin/sh
# Simulates a non-root invoking user (CI runs as root): `id -u` and `id -g` say {uid}; anything else is the real id.
case "$*" in
    -u|-g) echo {uid} ;;
    *) exec {real} "$@" ;;
esac
"""


def sh(*cmd: str, env: dict | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def podman_env():
    """podman ready to build offline: run/container-deps.sh (cached) and a container that really starts."""
    deps = sh("bash", str(ROOT / "run" / "container-deps.sh"), timeout=1800)
    print(deps.stderr)
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed and run/container-deps.sh could not install it")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    for var in ("EMDENOISE_GPU_ARGS", "EMDENOISE_ACCELERATORS", "EMDENOISE_IMAGE_TAR", "EMDENOISE_SINGULARITY_ARGS"):
        env.pop(var, None)
    started = sh("podman", "run", "--rm", BASE_IMAGE, "python3", "-c", "print('container runtime ok')", env=env,
                 check=False)
    if started.returncode != 0 or "container runtime ok" not in started.stdout:
        pytest.fail(f"the container runtime cannot start a container (podman run exited {started.returncode}):\n"
                    f"{started.stderr[-3000:]}")
    return env


@pytest.fixture(scope="module")
def chain(podman_env):
    """Remove the image, then run the whole chain through run/mlcube.sh podman-cpu with a recording podman, as the
    (simulated) non-root user USER_ID who owns the workspace, with the quickstart parameters (PARAMS)."""
    base = scratch_dir("emd-ctr-")  # no 'h' in the path of the fake tools (mlcube issue #347)
    bin_dir, state, workspace = base / "bin", base / "state", base / "ws"
    for folder in (bin_dir, state, workspace / "parameters"):
        folder.mkdir(parents=True)
    write_tool(bin_dir, "podman", real=shutil.which("podman"))
    fake_id = bin_dir / "id"
    fake_id.write_text(_FAKE_ID.format(uid=USER_ID, real=shutil.which("id")))
    fake_id.chmod(0o755)
    shutil.copy(ROOT / "workspace" / PARAMS, workspace / PARAMS)
    # The user's workspace is theirs: mlcube (root here) would create the missing output folders as root.
    for task in CHAIN:
        for name in cli.TASKS[task].outputs:
            (workspace / cli.TASKS[task].default_path(name)).mkdir(parents=True, exist_ok=True)
    for item in [workspace, *workspace.rglob("*")]:
        os.chown(item, USER_ID, USER_ID)
    env = {**podman_env, "PATH": f"{bin_dir}{os.pathsep}{podman_env['PATH']}", "EMD_FAKE_STATE": str(state),
           "MLCUBE_SYSTEM_SETTINGS": str(base / "settings.yaml"), "MLCUBE": str(find_mlcube()),
           "EMDENOISE_BASE_IMAGE": BASE_IMAGE, "MLCUBE_LOG_LEVEL": "info"}
    # mlcube builds only when the image is missing (build_strategy auto): remove it so that this source is built.
    sh("podman", "rmi", "--force", IMAGE, env=podman_env, check=False)
    assert [sh("id", flag, env=env).stdout.strip() for flag in ("-u", "-g")] == [str(USER_ID)] * 2
    res = sh("bash", str(ROOT / "run" / "mlcube.sh"), "podman-cpu", PARAMS, str(workspace),
             env=env, timeout=3000, check=False)
    timed = [json.loads(line) for line in (state / "seconds.jsonl").read_text().splitlines()] \
        if (state / "seconds.jsonl").exists() else []
    print("podman seconds:", {(c[1] if c[1] != "run" else c[c.index(IMAGE) + 1]): c[-1] for c in timed
                              if c[1] in ("build", "run")})
    try:
        yield {"res": res, "base": base, "workspace": workspace, "state": state, "env": env}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_mlcube_builds_the_image_and_runs_every_task_as_the_invoking_user(chain, podman_env):
    res = chain["res"]
    assert res.returncode == 0, f"run/mlcube.sh failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    calls = read_calls(chain["state"], "podman")
    builds = [c for c in calls if c[0] == "build"]
    assert len(builds) == 1 and builds[0][:3] == ["build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"], builds
    assert calls[calls.index(builds[0]) - 1] == ["inspect", "--type=image", IMAGE]
    runs = [c for c in calls if c[0] == "run"]
    assert [r[r.index(IMAGE) + 1] for r in runs] == list(CHAIN)
    for argv in runs:
        assert argv[1:4] == ["--rm", "-u", f"{USER_ID}:{USER_ID}"], argv

    labels = json.loads(sh("podman", "image", "inspect", IMAGE, env=podman_env).stdout)[0]["Labels"]
    assert labels["org.opencontainers.image.version"] == emdenoise.__version__
    head = sh("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
    assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty"), labels
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"]), labels
    assert labels["org.opencontainers.image.authors"] and labels["org.opencontainers.image.source"], labels
    left = sh("podman", "ps", "--all", "--quiet", "--filter", f"ancestor={IMAGE}", env=podman_env).stdout.split()
    assert left == [], "--rm: no stopped containers are left behind"


def test_outputs_exist_belong_to_the_user_and_the_model_beats_the_noisy_input(chain):
    assert chain["res"].returncode == 0, chain["res"].stderr[-4000:]
    ws = chain["workspace"]
    expected = ["data/raw/MANIFEST.json", "data/raw/train/graphene_img_noise.h5", "data/processed/dataset_card.json",
                "data/processed/train.h5", "data/processed/test.h5", "models/sciml_ae/em_denoise_model.h5",
                "output/train_metrics.json", "output/test_metrics.json", "output/results.md",
                *(f"logs/{task}.log" for task in CHAIN)]
    for rel in expected:
        assert (ws / rel).is_file() and (ws / rel).stat().st_size > 0, rel
    # Everything the containers wrote belongs to whoever ran mlcube (the simulated non-root user), not to root.
    for path in [ws / "data", ws / "models", ws / "output", ws / "logs"]:
        for item in [path, *path.rglob("*")]:
            st = item.lstat()
            assert (st.st_uid, st.st_gid) == (USER_ID, USER_ID), f"{item} is owned by {st.st_uid}:{st.st_gid}"
    metrics = json.loads((ws / "output" / "test_metrics.json").read_text())["methods"]
    print({name: round(m["psnr_mean"], 2) for name, m in metrics.items()})
    assert metrics["sciml_ae"]["psnr_mean"] > metrics["noisy"]["psnr_mean"]


def test_docker_archive_is_what_the_singularity_runner_converts(chain, podman_env):
    assert chain["res"].returncode == 0, chain["res"].stderr[-4000:]
    base, env = chain["base"], chain["env"]
    tar = base / f"emdenoise-{emdenoise.__version__}.tar"
    sh("podman", "save", "--format", "docker-archive", "-o", str(tar), IMAGE, env=podman_env, timeout=900)
    with tarfile.open(tar) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        assert any(tag.endswith(IMAGE) for tag in manifest[0]["RepoTags"]), manifest[0]["RepoTags"]
        assert all(layer in archive.getnames() for layer in manifest[0]["Layers"])
        config = json.load(archive.extractfile(manifest[0]["Config"]))
    assert config["config"]["Entrypoint"] == ["/opt/venv/bin/emdenoise"]
    assert "HOME=/tmp" in config["config"]["Env"]

    write_tool(base / "bin", "singularity")  # Singularity/Apptainer cannot be installed here: a recording fake
    workspace = base / "ws-sif"
    res = sh("bash", str(ROOT / "run" / "mlcube.sh"), "singularity", str(chain["workspace"] / PARAMS),
             str(workspace), env={**env, "EMDENOISE_IMAGE_TAR": str(tar), "TASKS": "download"})
    sif = workspace / ".image" / f"emdenoise-{emdenoise.__version__}.sif"
    calls = [c for c in read_calls(chain["state"], "singularity") if c != ["--version"]]
    assert calls[0] == ["build", str(sif), f"docker-archive:{tar}"], res.stderr
    run = calls[1]
    assert run[:3] == ["run", "--nv", "--cleanenv"] and run[run.index(str(sif)) + 1] == "download"


def simple_index(wheels: Path, requested: list[str]):
    """A GET handler for LocalServer: a PEP 503 "simple" package index of the wheels in ``wheels`` (/simple/,
    /simple/PROJECT/, /files/WHEEL); every path asked for is appended to ``requested``."""
    files = {wheel.name: wheel for wheel in wheels.glob("*.whl")}
    projects: dict[str, list[str]] = {}
    for name in sorted(files):
        projects.setdefault(re.sub(r"[-_.]+", "-", name.split("-")[0]).lower(), []).append(name)

    def page(links: dict[str, str]) -> bytes:
        anchors = "".join(f'<a href="{href}">{text}</a><br>\n' for text, href in links.items())
        return f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n".encode()

    def get(handler) -> None:
        path = urllib.parse.unquote(handler.path.split("?")[0])
        requested.append(path)
        parts = [part for part in path.split("/") if part]
        body, wheel = None, None
        if parts == ["simple"]:
            body = page({project: f"/simple/{project}/" for project in projects})
        elif len(parts) == 2 and parts[0] == "simple" and parts[1] in projects:
            body = page({name: f"/files/{urllib.parse.quote(name)}" for name in projects[parts[1]]})
        elif len(parts) == 2 and parts[0] == "files" and parts[1] in files:
            wheel = files[parts[1]]
        if body is None and wheel is None:
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html" if wheel is None else "application/octet-stream")
        handler.send_header("Content-Length", str(len(body) if wheel is None else wheel.stat().st_size))
        handler.end_headers()
        if wheel is None:
            handler.wfile.write(body)
        else:
            with open(wheel, "rb") as f:
                shutil.copyfileobj(f, handler.wfile)

    return get


def test_image_builds_from_a_package_index_when_wheels_holds_none(podman_env):
    """The Dockerfile's other path (a user's build, or a site mirror): wheels/ without wheels (only its tracked
    README.md) and pip reaching a package index, here a PEP 503 index on the host's 127.0.0.1 that serves the
    wheels run/container-deps.sh downloaded (--network=host). The image it builds must run the task CLI."""
    wheels = sorted((ROOT / "wheels").glob("*.whl"))
    assert wheels, "run/container-deps.sh fills wheels/"
    requested: list[str] = []
    server = LocalServer(simple_index(ROOT / "wheels", requested))
    base = scratch_dir("emd-index-")
    image = f"localhost/emdenoise-indextest:{emdenoise.__version__}"
    try:
        # The build context without the wheels: the cube's .dockerignore, and the wheels left out.
        ignore = base / "dockerignore"
        ignore.write_text((ROOT / ".dockerignore").read_text() + "\nwheels/*.whl\n")
        start = time.monotonic()
        built = sh("podman", "build", "--no-cache", "--network=host", "--ignorefile", str(ignore),
                   "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"PIP_INDEX_URL={server.url}/simple/",
                   "--build-arg", "PIP_TRUSTED_HOST=127.0.0.1", "-t", image, "-f", str(ROOT / "Dockerfile"),
                   str(ROOT), env=podman_env, timeout=1800)
        print(f"image build from the local index: {time.monotonic() - start:.0f} s")
        assert f"installing from the package index {server.url}/simple/" in built.stdout + built.stderr
        torch = next(w.name for w in wheels if w.name.startswith("torch-"))
        assert "/simple/torch/" in requested and f"/files/{torch}" in requested, sorted(set(requested))[:20]

        # The image runs a task: download of a small synthetic set into a mounted folder.
        (base / "ws").mkdir()
        (base / "ws" / "p.yaml").write_text("download: {source: synthetic, train_images: 4, test_images: 2, "
                                            "image_size: 64}\n")
        sh("podman", "run", "--rm", "--network=none", "--volume", f"{base / 'ws'}:/ws", image, "download",
           "--parameters_file=/ws/p.yaml", "--raw_data_dir=/ws/raw", "--log_dir=/ws/logs", env=podman_env)
        manifest = json.loads((base / "ws" / "raw" / "MANIFEST.json").read_text())
        assert manifest and (base / "ws" / "raw" / "train" / "graphene_img_noise.h5").is_file()
    finally:
        server.stop()
        sh("podman", "rmi", "--force", image, env=podman_env, check=False)
        shutil.rmtree(base, ignore_errors=True)
