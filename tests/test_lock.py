"""One run at a time per output folder (emdenoise.lock): a second run is refused naming the first, a lock left by a
killed run blocks nothing, the sweep of temporary files."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from support import TASK_OUTPUTS, one_error, run_cmd, run_here, task_paths

from emdenoise import cli, lock
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_BUSY, BusyError


def test_a_held_folder_refuses_a_second_holder_naming_the_first(tmp_path):
    folder = tmp_path / "out"
    with lock.hold({"output_dir": folder}, "train"):
        holder = lock.read_holder(folder)
        assert holder["pid"] == os.getpid() and holder["task"] == "train" and holder["host"]
        with pytest.raises(BusyError) as err:
            with lock.hold({"output_dir": folder}, "test"):
                pass
        message = err.value.message
        assert err.value.exit_code == EXIT_BUSY and "\n" not in message
        assert str(folder) in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert not (folder / lock.LOCK_NAME).exists()  # given back and deleted
    with lock.hold({"output_dir": folder}, "test"):  # free again
        pass


def test_a_lock_file_left_behind_blocks_nothing_and_new_folders_are_removed_when_empty(tmp_path):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (folder / lock.LOCK_NAME).write_text("{not json")  # what a killed run may leave
    with lock.hold({"data_dir": folder}, "preprocess"):
        assert lock.read_holder(folder)["pid"] == os.getpid()
    assert folder.is_dir() and not (folder / lock.LOCK_NAME).exists()

    fresh = tmp_path / "x" / "y" / "z"
    with pytest.raises(RuntimeError):
        with lock.hold({"data_dir": fresh}, "preprocess"):
            assert fresh.is_dir()
            raise RuntimeError("the task failed")
    assert not (tmp_path / "x").exists()  # a failed run leaves no empty folders behind
    with lock.hold({"data_dir": fresh}, "preprocess"):
        (fresh / "kept.txt").write_text("output")
    assert (fresh / "kept.txt").is_file()


def test_a_lock_file_deleted_under_a_waiting_run_is_not_mistaken_for_the_lock(tmp_path, monkeypatch):
    """Run A releases (deletes the file) after B opened it; C then takes a new file. B must not think it holds."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lock.LOCK_NAME).write_text("")
    real_flock = lock.fcntl.flock
    taken = []

    def flock(fd, op):
        if not taken:  # between B's open and B's flock: A deletes, C creates and locks anew
            os.unlink(folder / lock.LOCK_NAME)
            taken.append(open(folder / lock.LOCK_NAME, "w"))
            real_flock(taken[0], lock.fcntl.LOCK_EX | lock.fcntl.LOCK_NB)
        return real_flock(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    with pytest.raises(BusyError):
        with lock.hold({"output_dir": folder}, "test"):
            pass
    taken[0].close()


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """Lustre mounted without flock answers ENOSYS: a benchmark must still run there."""
    import logging

    def flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    log = logging.getLogger("test_lock.nolock")
    with caplog.at_level(logging.WARNING, logger=log.name):
        with lock.hold({"output_dir": tmp_path / "out"}, "test", log):
            (tmp_path / "out" / "result.json").write_text("{}")
    assert "does not support locks" in caplog.text and "Function not implemented" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def test_the_sweep_removes_only_what_atomic_writers_left(tmp_path):
    folder = tmp_path / "out"
    (folder / "m").mkdir(parents=True)
    (folder / "other").mkdir()
    left = [
        folder / ".train.h5.ab3d_9zq.h5.tmp",
        folder / "m" / ".em_denoise_model.h5.0a1b2c3d.h5.tmp",
        folder / ".results.md.kk8s7d6f.md.tmp",
    ]
    kept = [
        folder / ".hidden",
        folder / "notes.tmp",
        folder / ".x.h5.abcdefgh.npy.tmp",
        folder / ".a.abc.tmp",
        folder / "other" / ".val.h5.zzzzzzzz.h5.tmp",
    ]
    (folder / "other" / lock.LOCK_NAME).write_text("")  # another run's folder: not ours to clean
    for path in left + kept:
        path.write_bytes(b"partial")
    assert sorted(lock.sweep_temporaries(folder)) == sorted(left)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)


@pytest.mark.parametrize("task,out", TASK_OUTPUTS)
def test_every_task_refuses_an_output_folder_another_run_is_writing(tmp_path, task, out):
    paths = task_paths(tmp_path, task)
    with lock.hold({out: paths[out]}, "holder"):
        code, err = run_cmd(task, paths)
    one_error(code, err, EXIT_BUSY, str(paths[out]), f"pid {os.getpid()}", "another emdenoise run")
    others = [paths[o] for o in cli.TASKS[task].outputs if o not in (out, "log_dir")]
    assert not any(p.exists() for p in others)  # folders it created before giving up are gone again


@pytest.mark.parametrize("task,out", TASK_OUTPUTS + [(task, "log_dir") for task in cli.TASKS])
def test_an_output_path_with_a_file_in_the_way_is_one_line(tmp_path, capsys, task, out):
    """A path whose parent is a regular file cannot be written even by root."""
    paths = task_paths(tmp_path, task)
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    paths[out] = blocker / "sub"
    code, err = run_here(capsys, task, paths)
    one_error(code, err, EXIT_BAD_INPUT, out, str(blocker) if out != "log_dir" else str(paths[out]))
    assert blocker.read_text() == "in the way"
