"""The real image, end to end: built with podman THROUGH `mlcube run` from the Dockerfile (base image and wheels
made by run/container-deps.sh, so no registry is needed), then download, preprocess, train and test on a small
synthetic set in containers, then the image saved as a docker-archive tar for Singularity/Apptainer.

Marked `container` (minutes). Nothing is skipped: no podman, or a podman that cannot start a container, FAILS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

import emdenoise
from fake_tools import ROOT, find_mlcube, read_calls, scratch_dir, write_tool

pytestmark = pytest.mark.container

IMAGE = f"emdenoise:{emdenoise.__version__}"
CHAIN = ("download", "preprocess", "train", "test")
CONTAINERS_CONF = ROOT / ".cache" / "containers" / "containers.conf"
BASE_IMAGE = "localhost/emdenoise-base"
# The quickstart parameters, smaller: a few minutes on 2 shared cores, and still far above the noisy input.
SMALLER = {
    "download": {"train_images": 96, "test_images": 16, "image_size": 64},
    "train": {"epochs": 4, "batch_size": 8, "device": "cpu"},
    "test": {"baselines": ["gaussian"], "tune_images": 4, "figure_images": 2, "device": "cpu"},
}


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
    """Remove the image, then run the whole chain through run/mlcube.sh podman-cpu with a recording podman."""
    base = scratch_dir("emd-ctr-")
    bin_dir, state, workspace = base / "bin", base / "state", base / "ws"
    for folder in (bin_dir, state, workspace / "parameters"):
        folder.mkdir(parents=True)
    write_tool(bin_dir, "podman", real=shutil.which("podman"))
    params = yaml.safe_load((ROOT / "workspace" / "parameters" / "quickstart.parameters.yaml").read_text())
    for section, values in SMALLER.items():
        params.setdefault(section, {}).update(values)
    (workspace / "parameters" / "ci.parameters.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**podman_env, "PATH": f"{bin_dir}{os.pathsep}{podman_env['PATH']}", "EMD_FAKE_STATE": str(state),
           "MLCUBE_SYSTEM_SETTINGS": str(base / "settings.yaml"), "MLCUBE": str(find_mlcube()),
           "EMDENOISE_BASE_IMAGE": BASE_IMAGE, "MLCUBE_LOG_LEVEL": "info"}
    # mlcube builds only when the image is missing (build_strategy auto): remove it so that this source is built.
    sh("podman", "rmi", "--force", IMAGE, env=podman_env, check=False)
    res = sh("bash", str(ROOT / "run" / "mlcube.sh"), "podman-cpu", "parameters/ci.parameters.yaml", str(workspace),
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
    assert len(builds) == 1 and builds[0][:4] == ["build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t"]
    assert calls[calls.index(builds[0]) - 1] == ["inspect", "--type=image", IMAGE]
    runs = [c for c in calls if c[0] == "run"]
    assert [r[r.index(IMAGE) + 1] for r in runs] == list(CHAIN)
    for argv in runs:
        assert argv[1:4] == ["--rm", "-u", f"{os.getuid()}:{os.getgid()}"], argv

    labels = json.loads(sh("podman", "image", "inspect", IMAGE, env=podman_env).stdout)[0]["Labels"]
    assert labels["org.opencontainers.image.version"] == emdenoise.__version__
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
    # Everything the containers wrote belongs to whoever ran mlcube (not root, when that is someone else).
    for path in [ws / "data", ws / "models", ws / "output", ws / "logs"]:
        for item in [path, *path.rglob("*")]:
            st = item.lstat()
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f"{item} is owned by {st.st_uid}:{st.st_gid}"
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
    res = sh("bash", str(ROOT / "run" / "mlcube.sh"), "singularity", str(chain["workspace"] / "parameters" /
             "ci.parameters.yaml"), str(workspace), env={**env, "EMDENOISE_IMAGE_TAR": str(tar), "TASKS": "download"})
    sif = workspace / ".image" / f"emdenoise-{emdenoise.__version__}.sif"
    calls = [c for c in read_calls(chain["state"], "singularity") if c != ["--version"]]
    assert calls[0] == ["build", str(sif), f"docker-archive:{tar}"], res.stderr
    run = calls[1]
    assert run[:3] == ["run", "--nv", "--cleanenv"] and run[run.index(str(sif)) + 1] == "download"
