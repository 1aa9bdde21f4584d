"""The model zoo (emdenoise.zoo): models found by name in the package and in EMDENOISE_ZOO folders, the
``emdenoise zoo`` table, and every shipped model loadable, carded and installed as package data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from support import save_model

from emdenoise import zoo
from emdenoise.errors import InputError
from emdenoise.io import modelfile

ROOT = Path(__file__).resolve().parents[1]
CARD = {
    "architecture": "dncnn",
    "imaging_mode": "HRTEM",
    "pixel_size_angstrom": [0.12, 0.3],
    "dose_e_per_px": [50, 2000],
    "command": "run/train-zoo.sh",
    "scores": {"test": {"psnr": 31.31, "strongest_classical": {"name": "bragg", "psnr": 29.68}}},
}


def test_extra_folders_are_searched_and_listed_in_a_table(tmp_path, monkeypatch):
    save_model(tmp_path / "lab", "dncnn", depth=3, channels=8)
    (tmp_path / "lab" / "dncnn" / "card.json").write_text(json.dumps(CARD))
    monkeypatch.setenv(zoo.ENV, str(tmp_path / "lab"))
    found = zoo.models()
    assert found["dncnn"].model_file == tmp_path / "lab" / "dncnn" / "em_denoise_model.h5"
    assert zoo.get("zoo:dncnn") == found["dncnn"] == zoo.get("dncnn")
    row = next(line for line in zoo.table().splitlines() if line.startswith("| zoo:dncnn |"))
    assert "| dncnn | HRTEM | 0.12-0.3 | 50-2000 | +1.63 dB vs bragg |" in row
    with pytest.raises(InputError, match="expected one of .*dncnn.*emdenoise zoo"):
        zoo.get("zoo:missing")

    env = {**os.environ, "PYTHONPATH": str(ROOT), zoo.ENV: str(tmp_path / "lab")}
    res = subprocess.run(
        [sys.executable, "-m", "emdenoise", "zoo"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == 0 and "| zoo:dncnn | dncnn | HRTEM |" in res.stdout


def test_a_damaged_card_is_one_line_naming_it(tmp_path, monkeypatch):
    save_model(tmp_path / "lab", "dncnn", depth=3, channels=8)
    (tmp_path / "lab" / "dncnn" / "card.json").write_text("{not json")
    monkeypatch.setenv(zoo.ENV, str(tmp_path / "lab"))
    with pytest.raises(InputError, match="card.json"):
        zoo.table()


@pytest.mark.parametrize("name", sorted(p.parent.name for p in zoo.ZOO_DIR.glob(f"*/{zoo.MODEL_FILE}")) or ["-"])
def test_each_shipped_model_loads_has_its_card_and_is_package_data(name):
    if name == "-":
        pytest.skip("no model shipped yet")
    model = zoo.ZooModel(name, zoo.ZOO_DIR / name)
    net, meta = modelfile.load_model(model.model_file)
    card = model.card()
    assert set(zoo.CARD_FIELDS) <= set(card), f"{name}: card.json lacks {set(zoo.CARD_FIELDS) - set(card)}"
    assert card["architecture"] == meta["model"]
    assert model.card_file.is_file() and model.model_file.stat().st_size < 20 * 2**20  # small enough for git
    line = next(x for x in (ROOT / "pyproject.toml").read_text().splitlines() if x.startswith('"emdenoise.zoo" ='))
    patterns = json.loads(line.split("=", 1)[1])  # the package-data list: a TOML array of strings is JSON
    for path in (model.model_file, model.card_file, model.folder / zoo.CARD_JSON):
        relative = path.relative_to(zoo.ZOO_DIR).as_posix()
        assert any(fnmatch(relative, p) for p in patterns), relative


@pytest.mark.parametrize("name", sorted(p.parent.name for p in zoo.ZOO_DIR.glob(f"*/{zoo.MODEL_FILE}")) or ["-"])
def test_each_shipped_model_scores_its_card_on_the_check_set(name):
    """The model restores the fixed check set (emdenoise.zoo.check) within 0.1 dB of what its card records."""
    if name == "-":
        pytest.skip("no model shipped yet")
    from emdenoise.zoo import check

    recorded = zoo.ZooModel(name, zoo.ZOO_DIR / name).card()["check"]
    assert recorded["seed"] == check.SEED and recorded["pairs"] == check.PAIRS and recorded["size"] == check.SIZE
    assert check.check_psnr(name) == pytest.approx(recorded["psnr"], abs=0.1)


@pytest.mark.parametrize("name", sorted(p.parent.name for p in zoo.ZOO_DIR.glob(f"*/{zoo.MODEL_FILE}")) or ["-"])
def test_each_shipped_card_names_the_weights_it_describes(name):
    if name == "-":
        pytest.skip("no model shipped yet")
    from emdenoise.outputs import sha256_file

    model = zoo.ZooModel(name, zoo.ZOO_DIR / name)
    assert model.card()["sha256"] == sha256_file(model.model_file)


def _split(row: str, psnr: float, truth: float | None) -> dict:
    def scores(p: float, f1: float) -> dict:
        return {"psnr_mean": p, "band_psnr_mean": p + 1, "seconds_per_image": 0.05, "atoms": {"f1": f1}}

    methods = {row: scores(psnr, 0.5), "bragg": scores(29.0, 0.55), "noisy": scores(5.0, 0.1)}
    return {"n_images": 3, "methods": methods, "strongest_classical": {"name": "bragg"}, "truth": {"f1": truth}}


def test_the_card_is_rewritten_from_the_test_runs_that_scored_the_zoo(tmp_path, monkeypatch, capsys):
    from emdenoise.outputs import sha256_file
    from emdenoise.zoo import check

    shipped = zoo.models()["hrtem-ffdnet"]
    lab = tmp_path / "lab" / "mine"
    lab.mkdir(parents=True)
    (lab / zoo.MODEL_FILE).write_bytes(shipped.model_file.read_bytes())
    (lab / zoo.CARD_JSON).write_text(json.dumps({**CARD, "architecture": "ffdnet", "check": {"psnr": 0.0}}))
    monkeypatch.setenv(zoo.ENV, str(tmp_path / "lab"))
    run = tmp_path / "test_metrics.json"
    run.write_text(json.dumps({**_split("zoo:mine", 31.25, 0.7), "generalisation": _split("zoo:mine", 23.0, None)}))
    assert check.main(["mine", "--card", f"test={run}"]) == 0
    card = json.loads((lab / zoo.CARD_JSON).read_text())
    test = card["scores"]["test"]
    assert (test["psnr"], test["band_psnr"], test["atom_f1"], test["ms_per_image"]) == (31.25, 32.25, 0.5, 50.0)
    assert test["strongest_classical"] == {
        "name": "bragg",
        "psnr": 29.0,
        "band_psnr": 30.0,
        "atom_f1": 0.55,
        "ms_per_image": 50.0,
    }
    assert test["truth_atom_f1"] == 0.7 and card["scores"]["test_generalisation"]["psnr"] == 23.0
    assert card["check"]["psnr"] == pytest.approx(shipped.card()["check"]["psnr"], abs=0.1)  # the same weights
    assert card["sha256"] == sha256_file(lab / zoo.MODEL_FILE) and card["command"] == CARD["command"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_split("zoo:someone-else", 30.0, 0.7)))
    assert check.main(["mine", "--card", f"test={other}"]) == 2
    assert "other.json: methods: expected a row zoo:mine" in capsys.readouterr().err
    assert check.main(["mine", "--card", f"test={other}", "--row", "zoo:someone-else"]) == 0  # a candidate's row
    assert json.loads((lab / zoo.CARD_JSON).read_text())["scores"]["test"]["psnr"] == 30.0


def test_a_missing_test_run_is_one_line_naming_it(tmp_path, capsys):
    from emdenoise.zoo import check

    assert check.main(["hrtem-unet", "--card", f"test={tmp_path / 'none.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.json" in err and "expected a test_metrics.json" in err


def test_train_zoo_reproduces_every_shipped_model_by_default():
    """run/train-zoo.sh has a parameters file for each shipped model, and its default list names them all."""
    script = (ROOT / "run" / "train-zoo.sh").read_text()
    shipped = {p.parent.name for p in zoo.ZOO_DIR.glob(f"*/{zoo.MODEL_FILE}")}
    entries = dict(re.findall(r"^\s+\[([\w-]+)\]=(\S+)$", script, flags=re.M))
    default = re.search(r"\|\| NAMES=\(([^)]*)\)", script)
    assert default is not None and set(default.group(1).split()) == shipped == set(entries)
    assert all((ROOT / path).is_file() for path in entries.values())


def test_same_weights_tells_a_reproduction_from_a_model_one_ulp_away(tmp_path, capsys):
    """python -m emdenoise.zoo.check NAME --same-weights FILE (what run/train-zoo.sh ends with): 0 for the shipped
    weights in another file with other attributes, 1 naming the tensor for one weight changed by one ulp."""
    import numpy as np
    import torch

    from emdenoise.zoo import check

    model, meta = modelfile.load_model(zoo.get("hrtem-ffdnet").model_file)
    same = tmp_path / "same.h5"
    modelfile.save_model(same, model, {k: v for k, v in meta.items() if k in modelfile.META_KEYS and k != "metrics"})
    assert check.main(["hrtem-ffdnet", "--same-weights", str(same)]) == 0
    assert "bit for bit" in capsys.readouterr().out

    key, tensor = next((k, v) for k, v in model.state_dict().items() if v.is_floating_point())
    flat = tensor.view(-1)
    flat[0] = torch.from_numpy(np.nextafter(flat[:1].numpy(), np.float32(np.inf)))
    other = tmp_path / "other.h5"
    modelfile.save_model(other, model, {k: v for k, v in meta.items() if k in modelfile.META_KEYS})
    assert check.main(["hrtem-ffdnet", "--same-weights", str(other)]) == 1
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and f"state/{key} differs" in out and "not the weights of zoo:hrtem-ffdnet" in out

    assert check.main(["hrtem-ffdnet", "--same-weights", str(tmp_path / "none.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.h5" in err
