"""emdenoise.outputs: atomic files, the output transaction, the temporary-name rule."""

from __future__ import annotations

import os

import pytest

from emdenoise.errors import InputError
from emdenoise.outputs import STAGING_DIR, Transaction, atomic_path, check_output, is_temporary, sha256_file


def test_a_transaction_commits_in_the_declared_order(tmp_path):
    """The denoise order: the old sidecar goes, then the image moves, then its new sidecar."""
    image, sidecar = tmp_path / "a.tif", tmp_path / "a.tif.json"
    image.write_text("old image")
    sidecar.write_text("old sidecar")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(("move", os.path.basename(dst), image.exists() and image.read_text(), sidecar.exists()))
        real_replace(src, dst)

    tx = Transaction()
    tx.remove(sidecar)
    tx.write_text(image, "new image")
    tx.write_text(sidecar, "new sidecar")
    assert image.read_text() == "old image" and (tmp_path / STAGING_DIR / "a.tif").read_text() == "new image"
    os.replace = replace
    try:
        tx.commit()
    finally:
        os.replace = real_replace
    # when the image moved the old sidecar was already gone: a crash never pairs it with the new image
    assert seen == [("move", "a.tif", "old image", False), ("move", "a.tif.json", "new image", False)]
    assert (image.read_text(), sidecar.read_text()) == ("new image", "new sidecar")
    assert not (tmp_path / STAGING_DIR).exists()


def test_a_failed_block_leaves_the_old_files_and_no_staging(tmp_path):
    card = tmp_path / "dataset_card.json"
    card.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with Transaction() as tx:
            tx.write_text(tmp_path / "train.h5", "new split")
            tx.write_text(card, "new")
            raise RuntimeError("boom")
    assert card.read_text() == "old" and not (tmp_path / "train.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_card.json"]


def test_a_resumable_transaction_keeps_finished_files_for_the_next_run(tmp_path):
    done, pending = tmp_path / "sub" / "1.tif", tmp_path / "sub" / "2.tif"
    with pytest.raises(KeyboardInterrupt):
        with Transaction(resumable=True) as tx:
            tx.write_text(done, "frame 1")
            with tx.writing(pending) as tmp:
                tmp.write_text("half")
                raise KeyboardInterrupt  # killed while writing the second: its temporary file goes
    assert Transaction.staged_path(done).read_text() == "frame 1"
    assert os.listdir(tmp_path / "sub" / STAGING_DIR) == ["1.tif"] and not done.exists()
    with Transaction(resumable=True) as tx:  # the rerun: finds the first, writes the second
        assert tx.is_staged(done) and not tx.is_staged(pending)
        tx.put(done)
        tx.write_text(pending, "frame 2")
    assert (done.read_text(), pending.read_text()) == ("frame 1", "frame 2")
    assert sorted(os.listdir(tmp_path / "sub")) == ["1.tif", "2.tif"]  # the staging folder is gone


def test_a_missing_staged_file_stops_the_commit_before_anything_moves(tmp_path):
    first = tmp_path / "first.json"
    tx = Transaction()
    tx.write_text(first, "new")
    tx.put(tmp_path / "never_written.json")
    with pytest.raises(FileNotFoundError, match="never_written.json"):
        tx.commit()
    assert not first.exists() and Transaction.staged_path(first).read_text() == "new"


def test_atomic_path_keeps_the_old_file_on_failure_and_names_the_destination(tmp_path):
    dest = tmp_path / "metrics.json"
    dest.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            assert is_temporary(tmp.name)
            raise ValueError
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new" and oct(dest.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize(
    "name,temporary",
    [
        (".model.h5.a1b2c3d4.h5.tmp", True),  # what atomic_path writes for model.h5
        (".notes.abcdefgh.tmp", True),  # a name without a suffix
        ("notes.tmp", False),  # a user's own file
        (".model.h5.a1b2c3d4.txt.tmp", False),  # suffix does not repeat the name's: not ours
        (".model.h5.a1b2c3.h5.tmp", False),  # not mkstemp's 8 characters
    ],
)
def test_the_temporary_name_rule(name, temporary):
    assert is_temporary(name) is temporary


def test_sha256_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_check_output_refuses_what_cannot_be_written_and_creates_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under = f"{blocker / 'a' / 'b'}: output_dir: cannot be created: {blocker} is a file, not a folder"
    cases = [
        (blocker / "a" / "b", "folder", under),
        (blocker, "folder", f"{blocker}: output_dir: expected an output folder, found a file of that name"),
        (tmp_path, "file", f"{tmp_path}: output_dir: expected a file name, found a folder"),
    ]
    for path, kind, message in cases:
        with pytest.raises(InputError) as err:
            check_output(path, "output_dir", kind)
        assert err.value.message == message
    check_output(tmp_path / "new" / "deeper", "output_dir")  # creatable: fine, and not created
    check_output(tmp_path / "new" / "model.onnx", "--output", "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(InputError, match="expected a writable output folder, .* is not writable"):
            check_output(locked / "out", "output_dir")
