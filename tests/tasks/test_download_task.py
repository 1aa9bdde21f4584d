"""The download task's own part: the one folder lock the CLI holds on raw_data_dir, and the thin task itself."""

from __future__ import annotations

import json

from emdenoise import cli, lock
from emdenoise.errors import EXIT_BUSY
from emdenoise.layout import MANIFEST


def _download(tmp_path, raw) -> int:
    params = tmp_path / "p.yaml"
    params.write_text(
        "download:\n  source: synthetic\n  train_images: 2\n  test_images: 1\n  image_size: 32\n  workers: 1\n",
        encoding="utf-8",
    )
    return cli.main(
        ["download", f"--raw_data_dir={raw}", f"--parameters_file={params}", f"--log_dir={tmp_path / 'logs'}"]
    )


def test_a_second_download_into_the_same_folder_is_busy(tmp_path, capsys):
    # The folder lock is the only lock: the download holds no second one of its own.
    raw = tmp_path / "raw"
    with lock.hold({"raw_data_dir": raw}, "download"):  # another run is writing into raw_data_dir
        assert _download(tmp_path, raw) == EXIT_BUSY
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and str(raw) in errors[0] and "another emdenoise run" in errors[0]
        assert sorted(p.name for p in raw.iterdir()) == [lock.LOCK_NAME]  # nothing written
    assert _download(tmp_path, raw) == 0  # given back: the next run goes ahead
    names = {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()}
    assert names == {
        MANIFEST,
        "train/graphene_img_noise.h5",
        "train/graphene_img_clean.h5",
        "test/graphene_img_noise.h5",
        "test/graphene_img_clean.h5",
    }  # no lock file of its own
    assert json.loads((raw / MANIFEST).read_text())["file_count"] == 4
