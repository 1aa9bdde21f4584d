"""The task command line: names and spellings, one-line errors, exit codes, log files."""

import os
import signal
import subprocess
import sys
import time

import pytest

from emdenoise import cli
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_PIPE


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emdenoise", *args], capture_output=True, text=True, cwd=cwd)


def test_every_task_accepts_both_spellings_of_its_paths():
    parser = cli.build_parser()
    for task, spec in cli.TASKS.items():
        for arg in spec.inputs + spec.outputs:
            for flag in {f"--{arg}", f"--{arg.replace('_', '-')}"}:
                args = parser.parse_args([task, f"{flag}=/mlcube_io0/x"])
                assert getattr(args, arg) == "/mlcube_io0/x"


def test_task_table_matches_the_issue_contract():
    assert cli.TASKS["download"].inputs == ("parameters_file",)
    assert cli.TASKS["download"].outputs == ("raw_data_dir", "log_dir")
    assert cli.TASKS["preprocess"].inputs == ("raw_data_dir", "parameters_file")
    assert cli.TASKS["train"].outputs == ("model_dir", "output_dir", "log_dir")
    assert cli.TASKS["test"].inputs == ("data_dir", "model_dir", "parameters_file")


def test_bad_parameters_give_one_line_exit_2_and_a_log_file(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("train:\n  epohcs: 3\n")
    logs = tmp_path / "logs"
    res = run("download", f"--parameters_file={params}", f"--raw_data_dir={tmp_path / 'raw'}", f"--log_dir={logs}")
    assert res.returncode == EXIT_BAD_INPUT
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "train.epohcs" in errors[0] and "did you mean 'epochs'" in errors[0]
    assert "Traceback" not in res.stderr
    assert "train.epohcs" in (logs / "download.log").read_text()
    assert not (tmp_path / "raw").exists()


def test_debug_shows_the_traceback(tmp_path):
    res = run("download", f"--parameters_file={tmp_path / 'missing.yaml'}", f"--log_dir={tmp_path}", "--debug")
    assert res.returncode == EXIT_BAD_INPUT and "Traceback" in res.stderr


@pytest.mark.parametrize(
    "override,words",
    [
        ("download.sourse=stfc", ["--set: download.sourse: unknown key", "did you mean 'source'"]),
        ("download.seed=-3", ["--set: download.seed: expected an integer in [0, 4294967295], got -3"]),
        ("download.source=stcf", ["--set: download.source: expected one of", "did you mean 'stfc'"]),
    ],
)
def test_set_overrides_are_validated_and_named_in_the_error(repo_root, tmp_path, override, words):
    params = repo_root / "workspace" / "parameters" / "quickstart.parameters.yaml"  # a valid file
    res = run(
        "download",
        f"--parameters_file={params}",
        f"--raw_data_dir={tmp_path / 'raw'}",
        f"--log_dir={tmp_path / 'logs'}",
        "--set",
        override,
    )
    assert res.returncode == EXIT_BAD_INPUT
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(w in errors[0] for w in words), res.stderr
    assert params.name not in errors[0]  # the file holds no such mistake: do not blame it
    assert "Traceback" not in res.stderr and not (tmp_path / "raw").exists()


def test_no_task_prints_help_and_fails():
    res = run()
    assert res.returncode == EXIT_BAD_INPUT and "download" in res.stderr


@pytest.mark.parametrize("task", list(cli.TASKS))
def test_help_of_each_task_names_its_paths(task):
    res = run(task, "--help")
    assert res.returncode == 0
    for arg in cli.TASKS[task].inputs + cli.TASKS[task].outputs:
        assert f"--{arg}" in res.stdout


def test_console_script_is_installed(repo_root):
    exe = repo_root / ".venv" / "bin" / "emdenoise"
    res = subprocess.run([str(exe) if exe.exists() else "emdenoise", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("emdenoise ")


def test_one_table_holds_the_tasks_and_the_utilities():
    assert list(cli.COMMANDS)[: len(cli.TASKS)] == list(cli.TASKS)
    assert set(cli.COMMANDS) - set(cli.TASKS) == {"params", "zoo", "bench", "export"}
    res = run("--help")
    assert res.returncode == 0
    for name, row in cli.COMMANDS.items():
        assert name in res.stdout and row.help.split()[0] in res.stdout


@pytest.mark.parametrize(
    "command, options",
    [
        ("params", ["--debug"]),
        ("zoo", ["--debug"]),
        ("bench", ["--models", "--sizes", "--precision", "--compile", "--quick", "--output", "--debug"]),
        ("export", ["--model_dir", "--model", "--format", "--output", "--debug"]),
    ],
)
def test_help_of_each_utility_lists_its_options(command, options):
    res = run(command, "--help")
    assert res.returncode == 0 and res.stdout.startswith(f"usage: emdenoise {command}")
    assert all(option in res.stdout for option in options), res.stdout


def test_export_help_names_every_format():
    from emdenoise.inference import export

    res = run("export", "--help")
    assert all(fmt in res.stdout for fmt in export.FORMATS)


def test_utilities_fail_in_one_line_like_the_tasks(tmp_path):
    res = run("export", f"--model_dir={tmp_path}", "--format=gif", f"--output={tmp_path / 'm.gif'}")
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == EXIT_BAD_INPUT and len(errors) == 1 and "--format" in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def test_utilities_show_the_traceback_with_debug(tmp_path):
    """A test of its own: two runs of the command in one test cost more than the fast subset's CPU guard."""
    res = run("export", f"--model_dir={tmp_path}", "--format=gif", f"--output={tmp_path / 'm.gif'}", "--debug")
    assert res.returncode == EXIT_BAD_INPUT and "Traceback" in res.stderr


def test_a_closed_output_ends_quietly():
    """``emdenoise params | head``: the reader goes away before the table is written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emdenoise", "params"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the program has written anything: its first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_PIPE
    assert "Traceback" not in err and "BrokenPipe" not in err and "error" not in err, err


@pytest.mark.parametrize("signum,words", [(signal.SIGTERM, "interrupted (SIGTERM)"), (signal.SIGINT, "interrupted")])
def test_an_interrupt_a_library_turned_into_another_error_still_ends_as_interrupted(monkeypatch, capsys, signum, words):
    """h5py catches an exception raised in its datatype conversion and raises TypeError instead: the run
    still ends with exit 130 and says it was interrupted, and the signal handlers are given back."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def swallowed(args, log):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises during the sleep
        except BaseException:
            raise TypeError("Operation not defined for data type class") from None
        return 0

    monkeypatch.setitem(cli.COMMANDS, "params", cli.Utility(swallowed, lambda parser: None, "test"))
    # Ctrl-C as a terminal delivers it (pytest-xdist's workers ignore SIGINT, and the CLI leaves a caller's choice)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["params"]) == EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, before[1])
    err = capsys.readouterr().err
    assert [line.split("error: ")[1] for line in err.splitlines() if "error:" in line] == [words], err
    assert signal.getsignal(signal.SIGTERM) == before[0]
