"""The real image, end to end, with podman and with a real Docker daemon.

podman: the image built THROUGH `mlcube run` from the Dockerfile (base image and wheels made by
run/container-deps.sh, so no registry is needed), then download, preprocess, train and test with the quickstart
parameters in containers, as a non-root user, then the image saved as a docker-archive tar for
Singularity/Apptainer. A second build takes the dependencies from a package index instead of wheels/: a local
PEP 503 index on 127.0.0.1 that serves the same wheels.

docker: run/container-deps.sh installs the Docker engine and starts a daemon where none answers (as root); a
daemon it starts for this module is stopped when the module ends. The shipped quickstart chain plus denoise on a
few frames runs twice through mlcube's docker runner: `mlcube run --platform=docker` building the image itself
(build_strategy auto), and the original cube's `mlcube_docker run --mlcube=. --task=...`; its outputs must belong
to the (simulated non-root) user and equal those of the same chain run natively. The original cube's older lines
(`--platform=platforms/docker.yaml`, `--task=run/download.yaml`) run through run/mlcube_docker.

Marked `container` (minutes). Nothing is skipped: no podman or docker, or one that cannot start a container, FAILS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path

import h5py
import numpy as np
import pytest
from fake_tools import ROOT, find_mlcube, read_calls, scratch_dir, write_tool
from local_http import LocalServer

import emdenoise
from emdenoise import cli

pytestmark = pytest.mark.container

IMAGE = f"emdenoise:{emdenoise.__version__}"
CHAIN = ("download", "preprocess", "train", "test")
DOCKER_CHAIN = (*CHAIN, "denoise")  # the quickstart chain, then the trained model applied to a few frames
CONTAINERS_CONF = ROOT / ".cache" / "containers" / "containers.conf"
BASE_IMAGE = "localhost/emdenoise-base"
PARAMS = "parameters/quickstart.parameters.yaml"  # the shipped file, as a user runs it
FRAMES = "denoise/input/frames.npy"  # the denoise task's input: a 3-frame stack (write_frames)
# Variables of the cube and of run/container-deps.sh that a developer's shell may set: the tests set their own.
CUBE_ENV_VARS = (
    "EMDENOISE_GPU_ARGS",
    "EMDENOISE_ACCELERATORS",
    "EMDENOISE_IMAGE_TAR",
    "EMDENOISE_SINGULARITY_ARGS",
    "EMDENOISE_BASE_IMAGE",
    "EMDENOISE_REVISION",
    "EMDENOISE_CREATED",
    "MLCUBE_SYSTEM_SETTINGS",
)
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


def sh(
    *cmd: str, env: dict | None = None, timeout: float = 600, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd, check=False)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    version = ["docker", "version", "--format", "{{.Server.Version}}"]
    return subprocess.run(version, capture_output=True, check=False).returncode == 0


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CUBE_ENV_VARS}
    env.update(extra)
    return env


def write_frames(path: Path) -> None:
    """Three noisy 256x256 frames (Poisson counts on a lattice-like pattern, fixed seed) as one NPY stack."""
    y, x = np.mgrid[0:256, 0:256]
    lattice = 10 + 8 * np.cos(x / 3.0) * np.cos(y / 3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(0).poisson(lattice, size=(3, 256, 256)).astype(np.float32))


def user_workspace(base: Path, tasks: tuple[str, ...], owner: int | None = USER_ID) -> Path:
    """base/ws as a user sets it up: the shipped quickstart parameters, the frames for denoise, and the tasks'
    output folders, all owned by ``owner`` (mlcube, root here, would create the missing ones as root)."""
    workspace = base / "ws"
    (workspace / "parameters").mkdir(parents=True)
    shutil.copy(ROOT / "workspace" / PARAMS, workspace / PARAMS)
    write_frames(workspace / FRAMES)
    for task in tasks:
        for name in cli.TASKS[task].outputs:
            (workspace / cli.TASKS[task].default_path(name)).mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for item in [workspace, *workspace.rglob("*")]:
            os.chown(item, owner, owner)
    return workspace


def user_tools(bin_dir: Path, tool: str) -> None:
    """The recording ``tool`` (running the real one) and the fake `id` of the simulated user, in bin_dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    write_tool(bin_dir, tool, real=shutil.which(tool))
    fake_id = bin_dir / "id"
    fake_id.write_text(_FAKE_ID.format(uid=USER_ID, real=shutil.which("id")))
    fake_id.chmod(0o755)


def task_seconds(state: Path) -> dict[str, float]:
    """Wall seconds of each `build` and task `run` the recording tool timed."""
    path = state / "seconds.jsonl"
    timed = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {(c[1] if c[1] != "run" else c[c.index(IMAGE) + 1]): c[-1] for c in timed if c[1] in ("build", "run")}


def assert_owned_by_the_user(workspace: Path, tasks: tuple[str, ...]) -> None:
    """Everything the containers wrote belongs to whoever ran mlcube (the simulated non-root user), not root."""
    folders = {workspace / cli.TASKS[task].default_path(name) for task in tasks for name in cli.TASKS[task].outputs}
    for folder in sorted(folders):
        for item in [folder, *folder.rglob("*")]:
            st = item.lstat()
            assert (st.st_uid, st.st_gid) == (USER_ID, USER_ID), f"{item} is owned by {st.st_uid}:{st.st_gid}"


@pytest.fixture(scope="module")
def deps():
    """run/container-deps.sh (cached): podman, the Docker engine and a daemon, the base image in both, wheels/.
    A Docker daemon the script starts here (none answered before) is stopped when the module ends."""
    docker_was_up = docker_answers()
    res = sh("bash", str(ROOT / "run" / "container-deps.sh"), timeout=1800)
    print(res.stderr)
    try:
        yield res.stderr
    finally:
        if not docker_was_up:
            print(sh("bash", str(ROOT / "run" / "container-deps.sh"), "--stop-docker", check=False).stderr)


@pytest.fixture(scope="module")
def podman_env(deps):
    """podman ready to build offline, and a container that really starts."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed and run/container-deps.sh could not install it")
    env = clean_env(CONTAINERS_CONF=str(CONTAINERS_CONF))
    started = sh(
        "podman", "run", "--rm", BASE_IMAGE, "python3", "-c", "print('container runtime ok')", env=env, check=False
    )
    if started.returncode != 0 or "container runtime ok" not in started.stdout:
        pytest.fail(
            f"the container runtime cannot start a container (podman run exited {started.returncode}):\n"
            f"{started.stderr[-3000:]}"
        )
    return env


@pytest.fixture(scope="module")
def native():
    """The chain of the docker tests (DOCKER_CHAIN) run natively, with the task CLI of this environment, in a
    workspace set up the same way: what the containers' results must equal."""
    base = scratch_dir("emd-native-")
    workspace = user_workspace(base, DOCKER_CHAIN, owner=None)
    exe = Path(sys.executable).with_name("emdenoise")
    seconds = {}
    try:
        for task in DOCKER_CHAIN:
            start = time.monotonic()
            sh(
                str(exe),
                task,
                f"--workspace={workspace}",
                f"--parameters_file={workspace / PARAMS}",
                timeout=3000,
                env=clean_env(),
            )
            seconds[task] = round(time.monotonic() - start, 1)
        print("native seconds:", seconds, f"total {sum(seconds.values()):.0f} s")
        yield workspace
    finally:
        shutil.rmtree(base, ignore_errors=True)


def assert_same_results(workspace: Path, reference: Path, tasks: tuple[str, ...]) -> None:
    """The outputs of ``tasks`` in ``workspace`` equal those of the native run in ``reference``: the same data
    bytes, the same dataset statistics, the same trained weights, metrics and denoised frames (float32 exactly:
    the same wheels on the same CPU). Times, paths and timings (images/s) may differ."""

    def load(rel: str) -> dict:
        return json.loads((workspace / rel).read_text()), json.loads((reference / rel).read_text())

    got, want = load("data/raw/MANIFEST.json")
    assert got["files"] == want["files"], "downloaded data differs from the native run's"
    got, want = load("data/processed/dataset_card.json")
    for key in ("splits", "value_range", "normalisation", "data_range"):
        assert got[key] == want[key], key
    model = "models/sciml_ae/em_denoise_model.h5"
    with h5py.File(workspace / model, "r") as a, h5py.File(reference / model, "r") as b:
        weights = {}
        a.visititems(lambda name, obj: weights.setdefault(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        assert weights, f"no datasets in {model}"
        for name, value in weights.items():
            np.testing.assert_array_equal(value, b[name][()], err_msg=f"{model}:{name}")
    if "test" in tasks:
        got, want = load("output/test_metrics.json")
        assert sorted(got["methods"]) == sorted(want["methods"])
        for name, metrics in want["methods"].items():
            for key in ("psnr_mean", "ssim_mean"):
                assert got["methods"][name][key] == metrics[key], (name, key, got["methods"][name][key], metrics[key])
    if "denoise" in tasks:
        out = FRAMES.replace("/input/", "/output/")
        np.testing.assert_array_equal(np.load(workspace / out), np.load(reference / out))


@pytest.fixture(scope="module")
def chain(podman_env):
    """Remove the image, then run the whole chain through run/mlcube.sh podman-cpu with a recording podman, as the
    (simulated) non-root user USER_ID who owns the workspace, with the quickstart parameters (PARAMS)."""
    base = scratch_dir("emd-ctr-")  # no 'h' in the path of the fake tools (mlcube issue #347)
    bin_dir, state = base / "bin", base / "state"
    state.mkdir()
    user_tools(bin_dir, "podman")
    workspace = user_workspace(base, CHAIN)
    env = {
        **podman_env,
        "PATH": f"{bin_dir}{os.pathsep}{podman_env['PATH']}",
        "EMD_FAKE_STATE": str(state),
        "MLCUBE_SYSTEM_SETTINGS": str(base / "settings.yaml"),
        "MLCUBE": str(find_mlcube()),
        "EMDENOISE_BASE_IMAGE": BASE_IMAGE,
        "MLCUBE_LOG_LEVEL": "info",
    }
    # mlcube builds only when the image is missing (build_strategy auto): remove it so that this source is built.
    sh("podman", "rmi", "--force", IMAGE, env=podman_env, check=False)
    assert [sh("id", flag, env=env).stdout.strip() for flag in ("-u", "-g")] == [str(USER_ID)] * 2
    res = sh(
        "bash",
        str(ROOT / "run" / "mlcube.sh"),
        "podman-cpu",
        PARAMS,
        str(workspace),
        env=env,
        timeout=3000,
        check=False,
    )
    print("podman seconds:", task_seconds(state))
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


def test_outputs_exist_belong_to_the_user_and_equal_the_native_run(chain, native):
    assert chain["res"].returncode == 0, chain["res"].stderr[-4000:]
    ws = chain["workspace"]
    expected = [
        "data/raw/MANIFEST.json",
        "data/raw/train/graphene_img_noise.h5",
        "data/processed/dataset_card.json",
        "data/processed/train.h5",
        "data/processed/test.h5",
        "models/sciml_ae/em_denoise_model.h5",
        "output/train_metrics.json",
        "output/test_metrics.json",
        "output/results.md",
        *(f"logs/{task}.log" for task in CHAIN),
    ]
    for rel in expected:
        assert (ws / rel).is_file() and (ws / rel).stat().st_size > 0, rel
    assert_owned_by_the_user(ws, CHAIN)
    metrics = json.loads((ws / "output" / "test_metrics.json").read_text())["methods"]
    print({name: round(m["psnr_mean"], 2) for name, m in metrics.items()})
    assert metrics["sciml_ae"]["psnr_mean"] > metrics["noisy"]["psnr_mean"]
    assert_same_results(ws, native, CHAIN)


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
    res = sh(
        "bash",
        str(ROOT / "run" / "mlcube.sh"),
        "singularity",
        str(chain["workspace"] / PARAMS),
        str(workspace),
        env={**env, "EMDENOISE_IMAGE_TAR": str(tar), "TASKS": "download"},
    )
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
        built = sh(
            "podman",
            "build",
            "--no-cache",
            "--network=host",
            "--ignorefile",
            str(ignore),
            "--build-arg",
            f"BASE_IMAGE={BASE_IMAGE}",
            "--build-arg",
            f"PIP_INDEX_URL={server.url}/simple/",
            "--build-arg",
            "PIP_TRUSTED_HOST=127.0.0.1",
            "-t",
            image,
            "-f",
            str(ROOT / "Dockerfile"),
            str(ROOT),
            env=podman_env,
            timeout=1800,
        )
        print(f"image build from the local index: {time.monotonic() - start:.0f} s")
        assert f"installing from the package index {server.url}/simple/" in built.stdout + built.stderr
        torch = next(w.name for w in wheels if w.name.startswith("torch-"))
        assert "/simple/torch/" in requested and f"/files/{torch}" in requested, sorted(set(requested))[:20]

        # The image runs a task: download of a small synthetic set into a mounted folder.
        (base / "ws").mkdir()
        (base / "ws" / "p.yaml").write_text(
            "download: {source: synthetic, train_images: 4, test_images: 2, image_size: 64}\n"
        )
        sh(
            "podman",
            "run",
            "--rm",
            "--network=none",
            "--volume",
            f"{base / 'ws'}:/ws",
            image,
            "download",
            "--parameters_file=/ws/p.yaml",
            "--raw_data_dir=/ws/raw",
            "--log_dir=/ws/logs",
            env=podman_env,
        )
        manifest = json.loads((base / "ws" / "raw" / "MANIFEST.json").read_text())
        assert manifest and (base / "ws" / "raw" / "train" / "graphene_img_noise.h5").is_file()
    finally:
        server.stop()
        sh("podman", "rmi", "--force", image, env=podman_env, check=False)
        shutil.rmtree(base, ignore_errors=True)


# -- docker: a real daemon ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_env(deps):
    """A Docker daemon that answers (run/container-deps.sh starts one where it may) and runs a container."""
    if not docker_answers():
        pytest.fail(f"no Docker daemon answers and run/container-deps.sh did not start one:\n{deps[-3000:]}")
    env = clean_env()
    started = sh(
        "docker", "run", "--rm", BASE_IMAGE, "python3", "-c", "print('container runtime ok')", env=env, check=False
    )
    if started.returncode != 0 or "container runtime ok" not in started.stdout:
        pytest.fail(
            f"docker cannot start a container (docker run exited {started.returncode}):\n{started.stderr[-3000:]}"
        )
    return env


def docker_chain(docker_env, prefix: str, exe: Path, *args: str) -> dict:
    """Run ``exe run --mlcube=. ARGS --task=DOCKER_CHAIN`` from the repository root, as a user types it, with a
    recording docker, as the simulated user USER_ID who owns the workspace, with the quickstart parameters."""
    base = scratch_dir(prefix)
    state = base / "state"
    state.mkdir()
    user_tools(base / "bin", "docker")
    workspace = user_workspace(base, DOCKER_CHAIN)
    head = sh("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
    env = {
        **docker_env,
        "PATH": f"{base / 'bin'}{os.pathsep}{docker_env['PATH']}",
        "EMD_FAKE_STATE": str(state),
        "MLCUBE_SYSTEM_SETTINGS": str(base / "settings.yaml"),
        "EMDENOISE_BASE_IMAGE": BASE_IMAGE,
        "EMDENOISE_REVISION": head,
        "EMDENOISE_CREATED": "2026-01-02T03:04:05Z",
    }
    start = time.monotonic()
    res = sh(
        str(exe),
        "run",
        "--mlcube=.",
        *args,
        f"--task={','.join(DOCKER_CHAIN)}",
        f"--workspace={workspace}",
        f"parameters_file={PARAMS}",
        env=env,
        cwd=ROOT,
        timeout=3000,
        check=False,
    )
    seconds = task_seconds(state)
    print(f"{exe.name} run {' '.join(args)} seconds:", seconds, f"total {time.monotonic() - start:.0f} s")
    return {"res": res, "base": base, "workspace": workspace, "state": state, "env": env, "revision": head}


@pytest.fixture(scope="module")
def docker_auto(docker_env):
    """`mlcube run --mlcube=. --platform=docker --task=...`, with the image removed first: mlcube builds it."""
    sh("docker", "rmi", "--force", IMAGE, env=docker_env, check=False)
    run = docker_chain(docker_env, "emd-dkr-", find_mlcube(), "--platform=docker")
    try:
        yield run
    finally:
        shutil.rmtree(run["base"], ignore_errors=True)


@pytest.fixture(scope="module")
def docker_alias(docker_env, docker_auto):
    """The original cube's spelling, `mlcube_docker run --mlcube=. --task=...` (no platform: the docker one), on
    the image docker_auto built."""
    run = docker_chain(docker_env, "emd-dka-", find_mlcube().with_name("mlcube_docker"))
    try:
        yield run
    finally:
        shutil.rmtree(run["base"], ignore_errors=True)


def docker_runs(run: dict) -> list[list[str]]:
    res = run["res"]
    assert res.returncode == 0, f"mlcube failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    calls = read_calls(run["state"], "docker")
    runs = [c for c in calls if c[0] == "run"]
    assert [r[r.index(IMAGE) + 1] for r in runs] == list(DOCKER_CHAIN)
    for argv in runs:
        assert argv[1:4] == ["--rm", "-u", f"{USER_ID}:{USER_ID}"], argv
    return calls


def test_docker_mlcube_run_builds_the_image_and_runs_every_task_as_the_invoking_user(docker_auto, docker_env):
    calls = docker_runs(docker_auto)
    builds = [c for c in calls if c[0] == "build"]
    assert len(builds) == 1 and builds[0][:3] == ["build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"], builds
    assert calls[calls.index(builds[0]) - 1] == ["inspect", "--type=image", IMAGE]
    labels = json.loads(sh("docker", "image", "inspect", IMAGE, env=docker_env).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == emdenoise.__version__
    assert labels["org.opencontainers.image.revision"] == docker_auto["revision"], labels
    assert labels["org.opencontainers.image.created"] == docker_auto["env"]["EMDENOISE_CREATED"], labels
    left = sh("docker", "ps", "--all", "--quiet", "--filter", f"ancestor={IMAGE}", env=docker_env).stdout.split()
    assert left == [], "--rm: no stopped containers are left behind"


def test_docker_mlcube_docker_spelling_runs_the_chain_on_the_built_image(docker_alias):
    calls = docker_runs(docker_alias)
    assert [c[0] for c in calls].count("build") == 0, "build_strategy auto: the image is there, no rebuild"


@pytest.mark.parametrize("which", ["docker_auto", "docker_alias"])
def test_docker_outputs_belong_to_the_user_and_equal_the_native_run(request, which, native):
    run = request.getfixturevalue(which)
    assert run["res"].returncode == 0, run["res"].stderr[-4000:]
    ws = run["workspace"]
    for task in DOCKER_CHAIN:
        assert (ws / "logs" / f"{task}.log").is_file(), task
    assert (ws / FRAMES.replace("/input/", "/output/")).is_file()
    assert_owned_by_the_user(ws, DOCKER_CHAIN)
    assert_same_results(ws, native, DOCKER_CHAIN)


def test_the_original_readme_command_lines(docker_auto, docker_env, native):
    """What mlcube 0.0.9's own `mlcube_docker` does with the original cube's lines (it stops), and the same
    lines through run/mlcube_docker, which rewrites them, says so in one line, and runs them: configure (a
    rebuild, from the layer cache) and the download task."""
    env, mlcube_docker = docker_auto["env"], str(find_mlcube().with_name("mlcube_docker"))
    old_platform = "--platform=platforms/docker.yaml"
    res = sh(mlcube_docker, "configure", "--mlcube=.", old_platform, env=env, cwd=ROOT, check=False)
    assert res.returncode != 0 and "Missing key runner" in res.stderr, res.stderr[-2000:]
    res = sh(mlcube_docker, "run", "--mlcube=.", "--task=run/download.yaml", env=env, cwd=ROOT, check=False)
    assert res.returncode != 0 and "Unknown tasks have been requested" in res.stderr, res.stderr[-2000:]

    shim = str(ROOT / "run" / "mlcube_docker")
    state = docker_auto["state"]
    shutil.rmtree(state)
    state.mkdir()
    res = sh("bash", shim, "configure", "--mlcube=.", old_platform, env=env, cwd=ROOT, timeout=1800)
    assert "equivalent: mlcube configure --mlcube=. --platform=docker\n" in res.stderr, res.stderr[-2000:]
    assert [c[0] for c in read_calls(state, "docker")].count("build") == 1

    workspace = user_workspace(docker_auto["base"] / "seed", ("download",))
    res = sh(
        "bash",
        shim,
        "run",
        "--mlcube=.",
        old_platform,
        "--task=run/download.yaml",
        f"--workspace={workspace}",
        f"parameters_file={PARAMS}",
        env=env,
        cwd=ROOT,
    )
    line = (
        f"equivalent: mlcube run --mlcube=. --platform=docker --task=download --workspace={workspace} "
        f"parameters_file={PARAMS}\n"
    )
    assert line in res.stderr, res.stderr[-2000:]
    manifest = json.loads((workspace / "data/raw/MANIFEST.json").read_text())
    assert manifest["files"] == json.loads((native / "data/raw/MANIFEST.json").read_text())["files"]
    assert_owned_by_the_user(workspace, ("download",))
