"""The MLCube: the real mlcube 0.0.9 CLI reads mlcube.yaml, and the exact commands it runs, for every task and
platform, are checked with fake docker/podman/singularity executables that record their arguments.

No container runs here (tests/test_container.py does that). The fakes live in /tmp/emd-fake-XXXX: a path with no
letter 'h', since mlcube 0.0.9 prints its help instead of running when a -P value holds one (issue #347).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import emdenoise
from emdenoise import cli
from fake_tools import ROOT, find_mlcube, read_calls, scratch_dir, write_tool

IMAGE = "emdenoise:0.1.0"
CUBE_ENV_VARS = ("EMDENOISE_BASE_IMAGE", "EMDENOISE_GPU_ARGS", "EMDENOISE_ACCELERATORS", "EMDENOISE_IMAGE_TAR",
                 "EMDENOISE_SINGULARITY_ARGS", "CONTAINERS_CONF")
USER = f"{os.getuid()}:{os.getgid()}"
CHAIN = ("download", "preprocess", "train", "test")


class Cube:
    """A scratch place to run the real mlcube CLI against this repository with fake container tools."""

    def __init__(self, base: Path):
        self.base = base
        self.bin = base / "bin"
        self.state = base / "state"
        self.workspace = base / "ws"
        self.settings = base / "settings.yaml"
        self.mlcube = find_mlcube()
        for folder in (self.bin, self.state, self.workspace / "parameters"):
            folder.mkdir(parents=True)
        for name in ("quickstart", "default"):
            shutil.copy(ROOT / "workspace" / "parameters" / f"{name}.parameters.yaml", self.workspace / "parameters")
        for tool in ("docker", "podman", "singularity", "apptainer"):
            write_tool(self.bin, tool)
        self.env = {k: v for k, v in os.environ.items() if k not in CUBE_ENV_VARS}
        self.env.update(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", MLCUBE_SYSTEM_SETTINGS=str(self.settings),
                        EMD_FAKE_STATE=str(self.state), MLCUBE=str(self.mlcube))

    def reset(self) -> None:
        shutil.rmtree(self.state)
        self.state.mkdir()

    def calls(self, tool: str | None = None) -> list[list[str]]:
        return read_calls(self.state, tool)

    def run(self, *args: str, env: dict | None = None, cwd: Path = ROOT, exe: str | None = None):
        cmd = [exe or str(self.mlcube), *args]
        return subprocess.run(cmd, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=300)

    def script(self, *args: str, env: dict | None = None):
        return subprocess.run(["bash", str(ROOT / "run" / "mlcube.sh"), *args], cwd=ROOT,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cube():
    base = scratch_dir("emd-fake-")
    try:
        yield Cube(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def task_defaults(task: str) -> dict[str, str]:
    spec = cli.TASKS[task]
    return {name: spec.defaults.get(name, cli.DEFAULT_PATHS[name]) for name in spec.inputs + spec.outputs}


def expected_run(task: str, workspace: Path, params: str = "parameters/default.parameters.yaml"):
    """(volumes, task arguments) mlcube must pass for ``task``: inputs then outputs, in the CLI's order, each
    host folder mounted once as /mlcube_ioN (read-only for inputs), a file as its folder plus its name."""
    spec = cli.TASKS[task]
    mounts: dict[str, str] = {}
    volumes, args = [], [task]
    for name, default in task_defaults(task).items():
        host = workspace / (params if name == "parameters_file" else default)
        folder = host.parent if name == "parameters_file" else host
        if str(folder) not in mounts:
            mounts[str(folder)] = f"/mlcube_io{len(mounts)}"
            volumes.append(f"{folder}:{mounts[str(folder)]}" + (":ro" if name in spec.inputs else ""))
        inside = mounts[str(folder)] + (f"/{host.name}" if name == "parameters_file" else "")
        args.append(f"--{name}={inside}")
    return volumes, args


def split_run(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """docker/podman `run` argv -> (options before the volumes, volumes, image + task arguments)."""
    assert argv[0] == "run", argv
    image_at = argv.index(IMAGE)
    options, volumes, i = [], [], 1
    while i < image_at:
        if argv[i] == "--volume":
            volumes.append(argv[i + 1])
            i += 2
        else:
            assert not volumes, f"an option after the volumes: {argv}"
            options.append(argv[i])
            i += 1
    return options, volumes, argv[image_at:]


def check_chain(cube: Cube, tool: str, tasks, gpu_options: list[str], params: str,
                base_image: str = "python:3.11-slim") -> None:
    """The calls of one chain: inspect fails -> one build -> run per task with the right arguments."""
    calls = cube.calls(tool)
    builds = [c for c in calls if c[0] == "build"]
    assert builds == [["build", "--build-arg", f"BASE_IMAGE={base_image}", "-t", IMAGE, "-f",
                       str(ROOT / "Dockerfile"), str(ROOT)]], calls
    first_build = calls.index(builds[0])
    assert calls[first_build - 1] == ["inspect", "--type=image", IMAGE], "build only after a failed inspect"
    runs = [c for c in calls if c[0] == "run"]
    assert calls.index(runs[0]) > first_build
    assert [split_run(r)[2][1] for r in runs] == list(tasks)
    for argv in runs:
        options, volumes, tail = split_run(argv)
        task = tail[1]
        # --rm and the invoking user, whatever the platform; GPU flags exactly where asked for.
        assert options[:3] == ["--rm", "-u", USER], argv
        assert options[3:] == gpu_options, argv
        want_volumes, want_args = expected_run(task, cube.workspace, params)
        assert volumes == want_volumes
        assert tail == [IMAGE, *want_args]
        # ... and the task CLI in the image accepts exactly these arguments.
        parsed = cli.build_parser().parse_args(tail[1:])
        assert parsed.task == task and parsed.parameters_file.endswith(Path(params).name)
    for folder in (cube.workspace / v.split(":")[0] for argv in runs for v in split_run(argv)[1]):
        assert folder.is_dir(), f"mlcube creates the host folders: {folder}"


# -- the cube file -------------------------------------------------------------------------------------------------
def test_image_tag_is_the_package_version():
    cube = yaml.safe_load((ROOT / "mlcube.yaml").read_text())
    assert cube["docker"]["image"] == f"emdenoise:{emdenoise.__version__}"
    assert cube["singularity"]["image"] == f"emdenoise-{emdenoise.__version__}.sif"
    assert f"emdenoise-{emdenoise.__version__}.tar" in cube["singularity"]["build_file"]
    assert f"ARG VERSION={emdenoise.__version__}" in (ROOT / "Dockerfile").read_text()


def test_tasks_are_exactly_the_cli_tasks_with_its_names_order_and_defaults():
    tasks = yaml.safe_load((ROOT / "mlcube.yaml").read_text())["tasks"]
    assert list(tasks) == list(cli.TASKS)
    for task, spec in cli.TASKS.items():
        assert "entrypoint" not in tasks[task], "a one-word entrypoint drops the task arguments in mlcube 0.0.9"
        params = tasks[task]["parameters"]
        assert list(params["inputs"]) == list(spec.inputs)
        assert list(params["outputs"]) == list(spec.outputs)
        defaults = task_defaults(task)
        for io in ("inputs", "outputs"):
            for name, p in params[io].items():
                assert p["default"] == defaults[name], (task, name)
                assert p["type"] == ("file" if name == "parameters_file" else "directory"), (task, name)
                assert p.get("opts", "rw") == ("ro" if io == "inputs" else "rw"), (task, name)


def test_real_mlcube_describes_the_cube(cube):
    res = cube.run("describe", "--mlcube=.")
    assert res.returncode == 0, res.stderr
    for task, spec in cli.TASKS.items():
        assert f"name = {task}, inputs = {list(spec.inputs)}, outputs = {list(spec.outputs)}" in res.stdout
    assert f"system settings = {cube.settings}" in res.stdout
    assert cube.settings.is_file(), "mlcube writes its settings where MLCUBE_SYSTEM_SETTINGS points"


def test_show_config_resolves_the_interpolations(cube):
    res = cube.run("show_config", "--mlcube=.", "--resolve")
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load(res.stdout)
    assert config["platform"]["accelerator_count"] == 0
    runner = config["runner"]
    assert runner["image"] == IMAGE and runner["build_strategy"] == "auto" and runner["docker"] == "docker"
    assert runner["build_args"] == "--build-arg BASE_IMAGE=python:3.11-slim"
    assert runner["cpu_args"] == "--rm -u $(id -u):$(id -g)"
    assert runner["gpu_args"] == "--rm -u $(id -u):$(id -g) --gpus=all"
    assert config["singularity"]["run_args"] == "--nv --cleanenv"
    assert config["singularity"]["image_dir"] == str(ROOT / "workspace" / ".image")

    res = cube.run("show_config", "--mlcube=.", "--resolve", f"--workspace={cube.workspace}",
                   env={"EMDENOISE_BASE_IMAGE": "localhost/emdenoise-base", "EMDENOISE_ACCELERATORS": "2",
                        "EMDENOISE_GPU_ARGS": "--device nvidia.com/gpu=all"})
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load(res.stdout)
    assert config["platform"]["accelerator_count"] == 2
    assert config["runner"]["build_args"] == "--build-arg BASE_IMAGE=localhost/emdenoise-base"
    assert config["runner"]["gpu_args"] == "--rm -u $(id -u):$(id -g) --device nvidia.com/gpu=all"
    assert config["singularity"]["build_file"] == f"docker-archive:{cube.workspace}/.image/emdenoise-0.1.0.tar"


# -- exact commands, through run/mlcube.sh and its registered platforms ---------------------------------------------
PLATFORMS = {
    "docker-cpu": ("docker", []),
    "docker-gpu": ("docker", ["--gpus=all"]),
    "podman-cpu": ("podman", []),
    "podman-gpu": ("podman", ["--security-opt=label=disable", "--device", "nvidia.com/gpu=all"]),
}


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_run_script_chain_on_each_platform(cube, platform):
    tool, gpu_options = PLATFORMS[platform]
    cube.reset()
    res = cube.script(platform, "parameters/quickstart.parameters.yaml", str(cube.workspace))
    assert res.returncode == 0, res.stderr
    assert not cube.calls("docker" if tool == "podman" else "podman"), "the other tool was called"
    check_chain(cube, tool, CHAIN, gpu_options, "parameters/quickstart.parameters.yaml")
    # The platforms are registered, complete, in the settings file: plain `mlcube --platform=NAME` works.
    settings = yaml.safe_load(cube.settings.read_text())
    for name in [*PLATFORMS, "singularity"]:
        entry = settings["platforms"][name]
        declared = yaml.safe_load((ROOT / "platforms" / f"{name}.yaml").read_text())
        assert {k: entry[k] for k in declared} == declared
        assert "image" in entry and "runner" in entry


def test_minus_p_equivalents_of_the_platforms_for_every_task(cube):
    """The documented ways without registered platforms: -P overrides and the cube's environment variables,
    for every task of the cube (the chain and the later ones, such as denoise)."""
    every = tuple(cli.TASKS)
    tasks = "--task=" + ",".join(every)
    ws = f"--workspace={cube.workspace}"
    cases = [  # (args, env, tool, gpu options)
        (["-Pplatform.accelerator_count=1"], {}, "docker", ["--gpus=all"]),
        ([], {"EMDENOISE_ACCELERATORS": "1"}, "docker", ["--gpus=all"]),
        ([f"-Pdocker.docker={cube.bin / 'podman'}"], {}, "podman", []),
        (["-Pdocker.docker=podman", "-Pplatform.accelerator_count=1"],
         {"EMDENOISE_GPU_ARGS": "--device nvidia.com/gpu=all"}, "podman", ["--device", "nvidia.com/gpu=all"]),
    ]
    for args, env, tool, gpu_options in cases:
        cube.reset()
        res = cube.run("run", "--mlcube=.", "--platform=docker", tasks, ws, *args, env=env)
        assert res.returncode == 0, (args, res.stderr)
        check_chain(cube, tool, every, gpu_options, "parameters/default.parameters.yaml")


def test_mlcube_docker_alias_spelling_of_the_original_cube(cube):
    cube.reset()
    res = cube.run("run", "--mlcube=.", "--task=download", f"--workspace={cube.workspace}",
                   "parameters_file=parameters/quickstart.parameters.yaml",
                   exe=str(cube.mlcube.with_name("mlcube_docker")))
    assert res.returncode == 0, res.stderr
    check_chain(cube, "docker", ["download"], [], "parameters/quickstart.parameters.yaml")


def test_second_run_does_not_rebuild_and_a_failure_stops_the_chain_with_its_code(cube):
    cube.reset()
    ws = f"--workspace={cube.workspace}"
    assert cube.run("run", "--mlcube=.", "--task=download", ws).returncode == 0
    res = cube.run("run", "--mlcube=.", "--task=download,preprocess,train", ws,
                   env={"EMD_FAKE_FAIL_TASK": "preprocess", "EMD_FAKE_RC": "3"})
    assert res.returncode == 3
    calls = cube.calls("docker")
    assert [c[0] for c in calls].count("build") == 1
    assert [split_run(c)[2][1] for c in calls if c[0] == "run"] == ["download", "download", "preprocess"]


def test_run_script_refuses_what_mlcube_would_silently_skip(cube):
    cube.reset()
    res = cube.script("docker-cpu", "parameters/quickstart.parameters.yaml", str(cube.workspace), "--",
                      "-Pdocker.image=emdenoise:patch")
    assert res.returncode == 2 and "'h'" in res.stderr
    res = cube.script("kubernetes")
    assert res.returncode == 2 and "unknown platform" in res.stderr and "podman-gpu" in res.stderr
    res = cube.script("docker-cpu", "parameters/missing.yaml", str(cube.workspace))
    assert res.returncode == 2 and "not found" in res.stderr
    assert cube.calls() == []


# -- singularity ---------------------------------------------------------------------------------------------------
def test_singularity_builds_the_sif_once_from_the_docker_archive_and_binds_the_workspace(cube):
    cube.reset()
    tar = cube.base / "emdenoise-0.1.0.tar"
    tar.write_bytes(b"stands in for `podman save --format docker-archive`")
    sif = cube.workspace / ".image" / "emdenoise-0.1.0.sif"
    sif.unlink(missing_ok=True)
    res = cube.script("singularity", "parameters/quickstart.parameters.yaml", str(cube.workspace),
                      env={"EMDENOISE_IMAGE_TAR": str(tar), "TASKS": "download,preprocess,train,test"})
    assert res.returncode == 0, res.stderr
    calls = [c for c in cube.calls("singularity") if c != ["--version"]]
    builds = [c for c in calls if c[0] == "build"]
    assert builds == [["build", str(sif), f"docker-archive:{tar}"]]
    assert sif.is_file()
    runs = [c for c in calls if c[0] == "run"]
    assert len(runs) == len(CHAIN)
    for argv, task in zip(runs, CHAIN):
        assert argv[1:3] == ["--nv", "--cleanenv"]
        at = argv.index(str(sif))
        binds = argv[3:at]
        assert binds[0::2] == ["--bind"] * (len(binds) // 2)
        want_volumes, want_args = expected_run(task, cube.workspace, "parameters/quickstart.parameters.yaml")
        assert binds[1::2] == want_volumes
        assert argv[at + 1:] == want_args


def test_singularity_without_a_tar_says_how_to_make_one(cube):
    cube.reset()
    ws = cube.base / "ws-empty"
    res = cube.script("singularity", str(cube.workspace / "parameters" / "quickstart.parameters.yaml"), str(ws))
    assert res.returncode == 2
    assert re.search(r"podman save --format docker-archive -o \S+emdenoise-0\.1\.0\.tar emdenoise:0\.1\.0",
                     res.stderr)
    assert cube.calls("singularity") == []


@pytest.mark.parametrize("exe", ["singularity", "apptainer"])
def test_slurm_script_converts_once_and_runs_the_chain_with_the_gpus_of_the_job(cube, exe):
    cube.reset()
    tar = cube.base / "slurm.tar"
    tar.write_bytes(b"stands in for a docker-archive")
    ws = cube.base / f"ws-slurm-{exe}"
    env = {"EMDENOISE_IMAGE_TAR": str(tar), "SINGULARITY_EXE": exe, "CUDA_VISIBLE_DEVICES": "2,3",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "42"}
    for tasks in (",".join(CHAIN), "test"):  # a second job finds the SIF and does not convert again
        res = subprocess.run(["bash", str(ROOT / "run" / "slurm.sbatch"), "parameters/quickstart.parameters.yaml",
                              str(ws)], cwd=cube.base, env={**cube.env, **env, "TASKS": tasks},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    sif = ws / ".image" / "emdenoise-0.1.0.sif"
    calls = [c for c in cube.calls(exe) if c != ["--version"]]
    assert [c for c in calls if c[0] == "build"] == [["build", str(sif), f"docker-archive:{tar}"]], "one conversion"
    runs = [c for c in calls if c[0] == "run"]
    assert [r[r.index(str(sif)) + 1] for r in runs] == [*CHAIN, "test"]
    assert all(r[1:3] == ["--nv", "--cleanenv"] for r in runs)
    # (spython asks `singularity --version` whatever the runner's executable: only that may reach the other one)
    other = "singularity" if exe == "apptainer" else "apptainer"
    assert [c for c in cube.calls(other) if c != ["--version"]] == []
