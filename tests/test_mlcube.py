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
from fake_tools import ROOT, find_mlcube, read_calls, scratch_dir, write_tool

import emdenoise
from emdenoise import cli

IMAGE = "emdenoise:0.1.0"
CUBE_ENV_VARS = (
    "EMDENOISE_BASE_IMAGE",
    "EMDENOISE_GPU_ARGS",
    "EMDENOISE_ACCELERATORS",
    "EMDENOISE_IMAGE_TAR",
    "EMDENOISE_SINGULARITY_ARGS",
    "EMDENOISE_REVISION",
    "EMDENOISE_CREATED",
    "CONTAINERS_CONF",
)
USER = f"{os.getuid()}:{os.getgid()}"
CHAIN = ("download", "preprocess", "train", "test")
EVERY = tuple(cli.TASKS)  # every task of the cube: the chain and the later ones (denoise, study)
QUICKSTART = "parameters/quickstart.parameters.yaml"
SIF_NAME = f"emdenoise-{emdenoise.__version__}.sif"
# run/mlcube.sh labels the image with the commit it is built from and the time (RFC 3339, UTC).
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


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
        self.env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            MLCUBE_SYSTEM_SETTINGS=str(self.settings),
            EMD_FAKE_STATE=str(self.state),
            MLCUBE=str(self.mlcube),
        )

    def reset(self) -> None:
        shutil.rmtree(self.state)
        self.state.mkdir()

    def calls(self, tool: str | None = None) -> list[list[str]]:
        return read_calls(self.state, tool)

    def run(self, *args: str, env: dict | None = None, cwd: Path = ROOT, exe: str | None = None):
        cmd = [exe or str(self.mlcube), *args]
        return subprocess.run(
            cmd, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300
        )

    def script(self, *args: str, env: dict | None = None):
        return subprocess.run(
            ["bash", str(ROOT / "run" / "mlcube.sh"), *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )


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


def git_revisions() -> tuple[str, str]:
    """The revision label run/mlcube.sh may give the image: this checkout's commit, with "-dirty" when edited."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return head, f"{head}-dirty"


def check_chain(
    cube: Cube,
    tool: str,
    tasks,
    gpu_options: list[str],
    params: str,
    base_image: str = "python:3.11-slim",
    labelled: bool = False,
) -> None:
    """The calls of one chain: inspect fails -> one build -> run per task with the right arguments. The build
    arguments REVISION and CREATED are "unknown" from plain mlcube, the commit and the time from run/mlcube.sh
    (``labelled``)."""
    calls = cube.calls(tool)
    builds = [c for c in calls if c[0] == "build"]
    assert len(builds) == 1, calls
    at = builds[0].index("-t")
    assert builds[0][at:] == ["-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT)]
    assert builds[0][1:at:2] == ["--build-arg"] * 3, builds[0]
    build_args = dict(arg.split("=", 1) for arg in builds[0][2:at:2])
    assert list(build_args) == ["BASE_IMAGE", "REVISION", "CREATED"] and build_args["BASE_IMAGE"] == base_image
    if labelled:
        assert build_args["REVISION"] in git_revisions() and CREATED.fullmatch(build_args["CREATED"]), build_args
    else:
        assert build_args["REVISION"] == build_args["CREATED"] == "unknown", build_args
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


def check_singularity_runs(
    cube: Cube, exe: str, tasks, workspace: Path, params: str, run_args=("--nv", "--cleanenv")
) -> None:
    """The `singularity run` calls of a chain: GPUs and a clean environment, each task's folders bound as
    /mlcube_ioN, the SIF of the workspace, and the task arguments."""
    sif = workspace / ".image" / SIF_NAME
    runs = [c for c in cube.calls(exe) if c[0] == "run"]
    assert [r[r.index(str(sif)) + 1] for r in runs] == list(tasks)
    for argv, task in zip(runs, tasks):
        at = argv.index(str(sif))
        assert argv[1 : 1 + len(run_args)] == list(run_args), argv
        binds = argv[1 + len(run_args) : at]
        assert binds[0::2] == ["--bind"] * (len(binds) // 2)
        want_volumes, want_args = expected_run(task, workspace, params)
        assert binds[1::2] == want_volumes
        assert argv[at + 1 :] == want_args


# -- the cube file -------------------------------------------------------------------------------------------------
def test_image_tag_is_the_package_version():
    cube = yaml.safe_load((ROOT / "mlcube.yaml").read_text())
    assert cube["docker"]["image"] == f"emdenoise:{emdenoise.__version__}"
    assert cube["singularity"]["image"] == f"emdenoise-{emdenoise.__version__}.sif"
    assert f"emdenoise-{emdenoise.__version__}.tar" in cube["singularity"]["build_file"]
    assert f"ARG VERSION={emdenoise.__version__}" in (ROOT / "Dockerfile").read_text()


def test_dockerfile_labels_and_pins_what_the_index_path_installs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for label, value in [
        ("version", "${VERSION}"),
        ("source", "${SOURCE}"),
        ("revision", "${REVISION}"),
        ("created", "${CREATED}"),
        ("authors", "emdenoise contributors"),
    ]:
        assert f'org.opencontainers.image.{label}="{value}"' in dockerfile, label
    build_args = yaml.safe_load((ROOT / "mlcube.yaml").read_text())["docker"]["build_args"]
    assert set(build_args) == {"BASE_IMAGE", "REVISION", "CREATED"}
    # The setuptools that builds the package is pinned, and run/container-deps.sh downloads that same version.
    pins = set(re.findall(r"setuptools[=<>!~]=?[^\s\"']*", dockerfile))
    assert len(pins) == 1 and next(iter(pins)).startswith("setuptools=="), pins
    assert f'extra="{next(iter(pins))}"' in (ROOT / "run" / "container-deps.sh").read_text()
    # No glob in COPY (buildah has failed on a pattern that matches nothing): wheels/ is always there.
    assert not re.search(r"^COPY [^\n]*[*?\[]", dockerfile, re.MULTILINE)
    assert (ROOT / "wheels" / "README.md").is_file()
    ignored = [
        subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", f"wheels/{name}"], check=False).returncode == 0
        for name in ("README.md", "torch-2.13.0-cp311-cp311-linux_x86_64.whl", ".requirements.sha256")
    ]
    assert ignored == [False, True, True], "git keeps wheels/README.md and ignores the downloaded wheels"


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
    assert runner["build_args"] == (
        "--build-arg BASE_IMAGE=python:3.11-slim --build-arg REVISION=unknown --build-arg CREATED=unknown"
    )
    assert runner["cpu_args"] == "--rm -u $(id -u):$(id -g)"
    assert runner["gpu_args"] == "--rm -u $(id -u):$(id -g) --gpus=all"
    assert config["singularity"]["run_args"] == "--nv --cleanenv"
    assert config["singularity"]["image_dir"] == str(ROOT / "workspace" / ".image")

    res = cube.run(
        "show_config",
        "--mlcube=.",
        "--resolve",
        f"--workspace={cube.workspace}",
        env={
            "EMDENOISE_BASE_IMAGE": "localhost/emdenoise-base",
            "EMDENOISE_ACCELERATORS": "2",
            "EMDENOISE_GPU_ARGS": "--device nvidia.com/gpu=all",
            "EMDENOISE_REVISION": "0123abc",
            "EMDENOISE_CREATED": "2026-11-22T07:27:00Z",
        },
    )
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load(res.stdout)
    assert config["platform"]["accelerator_count"] == 2
    assert config["runner"]["build_args"] == (
        "--build-arg BASE_IMAGE=localhost/emdenoise-base --build-arg "
        "REVISION=0123abc --build-arg CREATED=2026-11-22T07:27:00Z"
    )
    assert config["runner"]["gpu_args"] == "--rm -u $(id -u):$(id -g) --device nvidia.com/gpu=all"
    assert config["singularity"]["build_file"] == f"docker-archive:{cube.workspace}/.image/emdenoise-0.1.0.tar"


# -- exact commands, through run/mlcube.sh and its registered platforms ---------------------------------------------
PLATFORMS = {  # platforms/NAME.yaml: (the tool mlcube calls, the flags that reach the GPUs)
    "docker-cpu": ("docker", []),
    "docker-gpu": ("docker", ["--gpus=all"]),
    "podman-cpu": ("podman", []),
    "podman-gpu": ("podman", ["--security-opt=label=disable", "--device", "nvidia.com/gpu=all"]),
    "singularity": ("singularity", ["--nv", "--cleanenv"]),
}


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_run_script_runs_every_task_on_each_platform(cube, platform):
    tool, gpu_options = PLATFORMS[platform]
    cube.reset()
    env = {"TASKS": ",".join(EVERY)}
    if tool == "singularity":  # the SIF is built once, from the docker-archive tar, before the first task
        tar = cube.base / "emdenoise-0.1.0.tar"
        tar.write_bytes(b"stands in for `podman save --format docker-archive`")
        sif = cube.workspace / ".image" / SIF_NAME
        sif.unlink(missing_ok=True)
        env["EMDENOISE_IMAGE_TAR"] = str(tar)
    res = cube.script(platform, QUICKSTART, str(cube.workspace), env=env)
    assert res.returncode == 0, res.stderr
    others = {"docker", "podman", "singularity"} - {tool}
    # (spython asks `singularity --version` whatever the platform: only that may reach another tool)
    assert [c for other in others for c in cube.calls(other) if c != ["--version"]] == [], "another tool ran"
    if tool == "singularity":
        calls = [c for c in cube.calls(tool) if c != ["--version"]]
        assert [c for c in calls if c[0] == "build"] == [["build", str(sif), f"docker-archive:{tar}"]]
        assert calls[0][0] == "build" and sif.is_file()
        check_singularity_runs(cube, tool, EVERY, cube.workspace, QUICKSTART, gpu_options)
    else:
        check_chain(cube, tool, EVERY, gpu_options, QUICKSTART, labelled=True)
    # The platforms are registered, complete, in the settings file: plain `mlcube --platform=NAME` works.
    settings = yaml.safe_load(cube.settings.read_text())
    for name in PLATFORMS:
        entry = settings["platforms"][name]
        declared = yaml.safe_load((ROOT / "platforms" / f"{name}.yaml").read_text())
        assert {k: entry[k] for k in declared} == declared
        assert "image" in entry and "runner" in entry


MINUS_P = {  # the documented ways without registered platforms: (-P overrides, environment, tool, GPU flags)
    "docker-cpu": ([], {}, "docker", []),
    "docker-gpu": (["-Pplatform.accelerator_count=1"], {}, "docker", ["--gpus=all"]),
    "docker-gpu-env": ([], {"EMDENOISE_ACCELERATORS": "1"}, "docker", ["--gpus=all"]),
    "podman-cpu-path": (["-Pdocker.docker={bin}/podman"], {}, "podman", []),
    "podman-gpu": (
        ["-Pdocker.docker=podman", "-Pplatform.accelerator_count=1"],
        {"EMDENOISE_GPU_ARGS": "--device nvidia.com/gpu=all"},
        "podman",
        ["--device", "nvidia.com/gpu=all"],
    ),
}


@pytest.mark.parametrize("case", list(MINUS_P))
def test_minus_p_equivalents_of_the_platforms_for_every_task(cube, case):
    """Plain `mlcube run --platform=docker` with -P overrides and the cube's environment variables, for every
    task of the cube, with the default parameters file."""
    args, env, tool, gpu_options = MINUS_P[case]
    cube.reset()
    res = cube.run(
        "run",
        "--mlcube=.",
        "--platform=docker",
        "--task=" + ",".join(EVERY),
        f"--workspace={cube.workspace}",
        *(a.format(bin=cube.bin) for a in args),
        env=env,
    )
    assert res.returncode == 0, (args, res.stderr)
    check_chain(cube, tool, EVERY, gpu_options, "parameters/default.parameters.yaml")


def test_mlcube_docker_alias_spelling_of_the_original_cube(cube):
    cube.reset()
    res = cube.run(
        "run",
        "--mlcube=.",
        "--task=download",
        f"--workspace={cube.workspace}",
        "parameters_file=parameters/quickstart.parameters.yaml",
        exe=str(cube.mlcube.with_name("mlcube_docker")),
    )
    assert res.returncode == 0, res.stderr
    check_chain(cube, "docker", ["download"], [], "parameters/quickstart.parameters.yaml")


def test_second_run_does_not_rebuild_and_a_failure_stops_the_chain_with_its_code(cube):
    cube.reset()
    ws = f"--workspace={cube.workspace}"
    assert cube.run("run", "--mlcube=.", "--task=download", ws).returncode == 0
    res = cube.run(
        "run",
        "--mlcube=.",
        "--task=download,preprocess,train",
        ws,
        env={"EMD_FAKE_FAIL_TASK": "preprocess", "EMD_FAKE_RC": "3"},
    )
    assert res.returncode == 3
    calls = cube.calls("docker")
    assert [c[0] for c in calls].count("build") == 1
    assert [split_run(c)[2][1] for c in calls if c[0] == "run"] == ["download", "download", "preprocess"]


def test_run_script_refuses_what_mlcube_would_silently_skip(cube):
    cube.reset()
    res = cube.script(
        "docker-cpu",
        "parameters/quickstart.parameters.yaml",
        str(cube.workspace),
        "--",
        "-Pdocker.image=emdenoise:patch",
    )
    assert res.returncode == 2 and "'h'" in res.stderr
    res = cube.script("kubernetes")
    assert res.returncode == 2 and "unknown platform" in res.stderr and "podman-gpu" in res.stderr
    res = cube.script("docker-cpu", "parameters/missing.yaml", str(cube.workspace))
    assert res.returncode == 2 and "not found" in res.stderr
    assert cube.calls() == []


# -- singularity ---------------------------------------------------------------------------------------------------
def test_singularity_without_a_tar_says_how_to_make_one(cube):
    cube.reset()
    ws = cube.base / "ws-empty"
    res = cube.script("singularity", str(cube.workspace / "parameters" / "quickstart.parameters.yaml"), str(ws))
    assert res.returncode == 2
    assert re.search(r"podman save --format docker-archive -o \S+emdenoise-0\.1\.0\.tar emdenoise:0\.1\.0", res.stderr)
    assert cube.calls("singularity") == []


@pytest.mark.parametrize("exe", ["singularity", "apptainer"])
def test_slurm_script_converts_once_and_runs_the_chain_with_the_gpus_of_the_job(cube, exe):
    cube.reset()
    tar = cube.base / "slurm.tar"
    tar.write_bytes(b"stands in for a docker-archive")
    ws = cube.base / f"ws-slurm-{exe}"
    env = {
        "EMDENOISE_IMAGE_TAR": str(tar),
        "SINGULARITY_EXE": exe,
        "CUDA_VISIBLE_DEVICES": "2,3",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": "42",
    }
    for tasks in (",".join(CHAIN), "test"):  # a second job finds the SIF and does not convert again
        res = subprocess.run(
            ["bash", str(ROOT / "run" / "slurm.sbatch"), "parameters/quickstart.parameters.yaml", str(ws)],
            cwd=cube.base,
            env={**cube.env, **env, "TASKS": tasks},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
    sif = ws / ".image" / SIF_NAME
    calls = [c for c in cube.calls(exe) if c != ["--version"]]
    # One conversion, by the script under the job's lock, to a temporary name renamed when complete.
    partial = sif.with_name(f"emdenoise-{emdenoise.__version__}.partial-42.sif")
    assert [c for c in calls if c[0] == "build"] == [["build", str(partial), f"docker-archive:{tar}"]]
    assert sorted(p.name for p in sif.parent.iterdir()) == [SIF_NAME, f"{SIF_NAME}.lock"], "no partial SIF left"
    assert sif.read_bytes() == b"fake sif"
    # (a new workspace: run/mlcube.sh takes the repository's parameters file, by its absolute path)
    check_singularity_runs(cube, exe, [*CHAIN, "test"], ws, str(ROOT / "workspace" / QUICKSTART))
    # (spython asks `singularity --version` whatever the runner's executable: only that may reach the other one)
    other = "singularity" if exe == "apptainer" else "apptainer"
    assert [c for c in cube.calls(other) if c != ["--version"]] == []


def test_slurm_jobs_started_together_convert_the_image_once(cube):
    """Two jobs submitted at once: the second waits on the lock while the first converts (a slow build here), then
    finds the SIF; without the lock, or without looking again after taking it, both would convert."""
    cube.reset()
    tar = cube.base / "together.tar"
    tar.write_bytes(b"stands in for a docker-archive")
    ws = cube.base / "ws-slurm-together"
    env = {
        **cube.env,
        "EMDENOISE_IMAGE_TAR": str(tar),
        "SINGULARITY_EXE": "singularity",
        "TASKS": "download",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "EMD_FAKE_BUILD_SECONDS": "3",
    }
    jobs = [
        subprocess.Popen(
            ["bash", str(ROOT / "run" / "slurm.sbatch"), QUICKSTART, str(ws)],
            cwd=cube.base,
            env={**env, "SLURM_JOB_ID": job},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in ("51", "52")
    ]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    sif = ws / ".image" / SIF_NAME
    builds = [c for c in cube.calls("singularity") if c[0] == "build"]
    assert len(builds) == 1, builds
    assert builds[0][1] in {
        str(sif.with_name(f"emdenoise-{emdenoise.__version__}.partial-{job}.sif")) for job in ("51", "52")
    }
    assert sif.read_bytes() == b"fake sif"
    assert sorted(p.name for p in sif.parent.iterdir()) == [SIF_NAME, f"{SIF_NAME}.lock"]
    check_singularity_runs(cube, "singularity", ["download", "download"], ws, str(ROOT / "workspace" / QUICKSTART))
