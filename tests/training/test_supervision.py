"""train.supervision: the blind-spot input, Poisson thinning, frame pairs, dead pixels, the count scale's
source, and each mode training, resuming and recording itself in the model file (every architecture in
every mode: one parametrised test, tiny sizes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from training_data import make_counted_data_dir

from emdenoise import models
from emdenoise.config import params
from emdenoise.errors import InputError
from emdenoise.io import h5safe, modelfile
from emdenoise.training import loop as training
from emdenoise.training import supervision
from emdenoise.training.supervision import Supervisor

SELF = ("noise2void", "poisson_split", "frame_pairs")


@pytest.fixture(scope="module")
def counted_dir(tmp_path_factory):
    return make_counted_data_dir(tmp_path_factory.mktemp("counted"))


def _weights(path):
    model, _ = modelfile.load_model(path)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_blind_spots_are_random_never_the_centre_and_only_in_the_loss():
    gen = supervision.batch_generator(1, torch.device("cpu"))
    noisy = torch.randperm(2 * 24 * 24, generator=gen).float().reshape(2, 1, 24, 24)  # every value distinct
    spots = torch.rand(noisy.shape, generator=gen) < 0.05
    out = supervision.blind_spot_input(noisy, spots, gen)
    assert torch.equal(out[~spots], noisy[~spots])  # only the spots change
    assert not torch.any(out[spots] == noisy[spots])  # never replaced by the pixel itself
    # each replacement is the median of the 5x5 neighbourhood without the centre
    b, _, y, x = (int(v) for v in spots.nonzero()[0])
    window = noisy[b, 0, max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
    assert float(out[b, 0, y, x]) in window.flatten().tolist()
    sup = Supervisor("noise2void", 0.05)
    inp, target, mask = sup.batch(noisy, noisy, None, None, key=7)
    assert torch.equal(target, noisy) and mask is not None and 0 < mask.float().mean() < 0.15
    assert torch.equal(inp != noisy, mask)  # the loss is taken exactly at the blind spots
    rows = mask[0, 0].nonzero()[:, 0]
    assert len(set(rows.tolist())) > 3 and not torch.all(rows % 2 == rows[0] % 2)  # no grid
    again = sup.batch(noisy, noisy, None, None, key=7)
    assert torch.equal(again[0], inp)  # the same key draws the same spots (resume)


def test_poisson_split_halves_add_up_and_are_independent():
    rng = np.random.default_rng(0)
    lam = 8.0
    counts = torch.from_numpy(rng.poisson(lam, (4, 1, 64, 64)).astype(np.float32))
    dose = 4.0  # stored values = counts / dose
    sup = Supervisor("poisson_split", mean=1.0, std=0.5)
    noisy = (counts / dose - sup.mean) / sup.std
    inp, target, mask = sup.batch(noisy, noisy, None, torch.full((4,), dose), key=3)
    a = (inp * sup.std + sup.mean) * dose / 2
    b = (target * sup.std + sup.mean) * dose / 2
    torch.testing.assert_close(a + b, counts)
    assert torch.equal(a, a.round()) and float(a.min()) >= 0
    assert float(a.mean()) == pytest.approx(lam / 2, rel=0.05)  # Poisson(lam / 2) halves
    assert float(a.var()) == pytest.approx(lam / 2, rel=0.1)
    corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
    assert abs(corr) < 0.05  # independent given the signal


def test_count_scale_sources(tmp_path):
    counts = np.random.default_rng(0).poisson(5.0, (3, 16, 16)).astype(np.float32)
    where = tmp_path / "train.h5"
    scale, source = supervision.count_scales(counts / 4, np.full(3, 4.0), {}, 0.0, where, True)
    assert source == "dose" and np.all(scale == 4)
    assert supervision.count_scales(counts / 4, None, {}, 2.5, where, True)[1] == "train.counts_per_unit"
    card = {"count_scale": 4.0, "count_scale_source": "estimated"}
    assert supervision.count_scales(counts / 4, None, card, 0.0, where, True)[1].startswith("dataset card")
    assert supervision.count_scales(counts, None, {}, 0.0, where, True)[0].tolist() == [1, 1, 1]
    with pytest.raises(InputError, match=r"train\.h5.*noisy.*whole-number counts.*train.counts_per_unit"):
        supervision.count_scales(counts / 4.1, None, {}, 0.0, where, True)
    estimated, source = supervision.count_scales(counts / 4.1, None, {}, 0.0, where, False)
    assert source == "estimated from each image" and np.all(np.abs(estimated / 4.1 - 1) < 0.3)


def test_poisson_split_of_detector_values_splits_the_counts_above_the_offset():
    rng = np.random.default_rng(1)
    offset, gain, lam = 1000.0, 7.5, 8.0
    counts = torch.from_numpy(rng.poisson(lam, (4, 1, 64, 64)).astype(np.float32))
    sup = Supervisor("poisson_split", mean=1060.0, std=20.0, offset=offset)
    noisy = (offset + gain * counts - sup.mean) / sup.std
    inp, target, _ = sup.batch(noisy, noisy, None, torch.full((4,), 1.0 / gain), key=3)
    a = ((inp * sup.std + sup.mean) - offset) / gain / 2
    b = ((target * sup.std + sup.mean) - offset) / gain / 2
    torch.testing.assert_close(a + b, counts, atol=1e-3, rtol=0)
    assert torch.allclose(a, a.round(), atol=1e-3) and float(a.min()) >= -1e-3
    assert float(a.mean()) == pytest.approx(lam / 2, rel=0.05)  # Poisson halves of the counts, not of the values
    assert float((inp * sup.std + sup.mean).mean()) == pytest.approx(offset + gain * lam, rel=0.01)  # same units


def test_the_card_detector_model_gives_the_scale_and_the_offset(tmp_path):
    values = np.full((3, 16, 16), 1003.5, np.float32)
    card = {"detector_offset": 1000.0, "detector_gain": 7.5, "detector_source": "photon transfer", "count_scale": None}
    scales, offset, source = supervision.count_model(values, None, card, 0.0, tmp_path / "train.h5", True)
    assert offset == 1000.0 and np.allclose(scales, 1 / 7.5) and source.startswith("dataset card detector model")
    assert supervision.count_model(values, None, card, 2.0, tmp_path / "train.h5", True)[1] == 0.0  # set by hand
    refused = {"detector_offset": None, "detector_gain": None, "detector_source": "no detector model fits: flat"}
    with pytest.raises(InputError, match="no detector model either: no detector model fits: flat"):
        supervision.count_model(values, None, refused, 0.0, tmp_path / "train.h5", True)
    assert supervision.record("poisson_split", source, scales, 0.02, offset)["count_offset"] == 1000.0


def test_dead_pixels_are_zeros_where_counts_were_expected():
    raw = np.full((1, 8, 8), 10.0, np.float32)
    raw[0, 2, 3] = 0.0
    raw[0, 6, 6] = 0.0
    dead = supervision.dead_pixels(raw, np.array([1.0]))
    assert dead[0, 2, 3] and dead.sum() == 2
    assert not supervision.dead_pixels(raw / 10, np.array([1.0])).any()  # 1 count expected: a zero is noise


def test_frame_pairs_join_consecutive_frames_of_a_stack(tmp_path):
    stack, frame = np.array([0, 0, 0, 1, 2, 2]), np.array([0, 2, 1, 0, 0, 1])
    a, b = supervision.frame_pair_rows(stack, frame, tmp_path)
    assert sorted(zip(a.tolist(), b.tolist())) == sorted([(0, 2), (2, 1), (2, 0), (1, 2), (4, 5), (5, 4)])
    with pytest.raises(InputError, match="stacks of at least 2 consecutive frames"):
        supervision.frame_pair_rows(np.array([0, 1]), np.array([0, 0]), tmp_path)
    with pytest.raises(InputError, match="stack.*expected stack and frame datasets"):
        supervision.frame_pair_rows(None, None, tmp_path)


@pytest.mark.parametrize("mode", SELF)
def test_load_data_prepares_each_mode(counted_dir, mode):
    train = params.defaults().train.replace(supervision=mode, patch_size=16)
    data = training.load_data(counted_dir, train, {"noisy": {"mean": 0.5, "std": 0.2}}, "params", {})
    assert data.valid is not None and not data.valid[:, 0, 3, 5].any()  # the dead pixel is out of every loss
    assert data.val_pairs is not None and data.supervision["mode"] == mode
    np.testing.assert_array_equal(data.val.noisy, training.load_split(counted_dir, "val").noisy)  # raw, for PSNR
    index, corners, key = training.epoch_plan(data, 4, seed=0, epoch=1)[0]
    inp, target, mask = training.gather(data, index, corners, key)
    assert inp.shape == target.shape == (4, 1, 16, 16) and mask is not None and mask.dtype == torch.bool
    if mode == "frame_pairs":
        assert len(data) == 16  # 8 stacks of two frames, both ways round
        assert not torch.equal(inp, target)
    if mode == "poisson_split":
        assert data.supervision["count_scale_source"] == "dose"


def _train_and_resume(tmp_path, data_dir, train_cli, stop_after_epoch, **settings):
    code, full_dir, full_out = train_cli(tmp_path / "full", data_dir, **settings)
    assert code == 0
    stop_after_epoch(1)
    code, part_dir, part_out = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 130
    stop_after_epoch(None)
    code, _, part_out = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 0
    name = settings.get("model", "sciml_ae")
    a, b = (
        _weights(full_dir / name / "em_denoise_model_last.h5"),
        _weights(part_dir / name / "em_denoise_model_last.h5"),
    )
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    return full_dir / name, json.loads((full_out / "train_metrics.json").read_text())


@pytest.mark.parametrize("mode", SELF)
def test_each_mode_trains_resumes_and_is_recorded(tmp_path, counted_dir, train_cli, stop_after_epoch, mode):
    folder, metrics = _train_and_resume(
        tmp_path, counted_dir, train_cli, stop_after_epoch, supervision=mode, epochs=2, patch_size=16
    )
    _, meta = modelfile.load_model(folder / "em_denoise_model.h5")
    assert meta["supervision"]["mode"] == mode
    assert meta["train_config"]["supervision"] == mode
    if mode == "poisson_split":
        assert meta["supervision"]["count_scale_source"] == "dose"
    # the targets are noisy: the output is de-normalised with the noisy statistics
    assert meta["normalisation"]["clean"] == meta["normalisation"]["noisy"]
    rows = metrics["epochs"]
    assert all(r["val_loss"] is not None and np.isfinite(r["val_loss"]) for r in rows)
    assert all(r["val_psnr"] is not None for r in rows)  # clean val images present: PSNR as well
    assert all(r["val_deviation"] is None for r in rows)  # (the deviance check is for noisy-only val data)


def test_supervised_model_files_say_clean(tmp_path, counted_dir, train_cli):
    code, model_dir, out = train_cli(tmp_path, counted_dir, epochs=1)
    assert code == 0
    _, meta = modelfile.load_model(model_dir / "sciml_ae" / "em_denoise_model.h5")
    assert meta["supervision"] == {"mode": "clean"} and "supervision" not in meta["train_config"]
    assert meta["input_units"] == "counts / dose"  # a dose per frame: denoise brings frames to that level
    assert json.loads((out / "train_metrics.json").read_text())["epochs"][0]["val_loss"] is None


def test_init_from_fine_tunes_and_refuses_another_architecture(tmp_path, counted_dir, train_cli, capsys):
    code, base_dir, _ = train_cli(tmp_path / "base", counted_dir, epochs=1)
    assert code == 0
    base = base_dir / "sciml_ae" / "em_denoise_model.h5"
    code, tuned_dir, _ = train_cli(
        tmp_path / "tuned", counted_dir, epochs=1, lr=0.0, supervision="noise2void", init_from=str(base)
    )
    assert code == 0
    start, tuned = _weights(base), _weights(tuned_dir / "sciml_ae" / "em_denoise_model.h5")
    for key in (k for k in start if "running_" not in k and "num_batches" not in k):  # (BN statistics move)
        # lr 0: the fine-tuned weights are the weights it started from
        np.testing.assert_allclose(start[key], tuned[key], err_msg=key)
    capsys.readouterr()
    code, _, _ = train_cli(tmp_path / "other", counted_dir, epochs=1, model="dncnn", init_from=str(base))
    err = capsys.readouterr().err
    assert code == 2 and "em_denoise_model.h5: model: expected a dncnn model file" in err
    assert "Traceback" not in err
    code, _, _ = train_cli(tmp_path / "missing", counted_dir, epochs=1, init_from=str(tmp_path / "none.h5"))
    assert code == 2 and "train.init_from: expected an existing model file" in capsys.readouterr().err


def test_init_from_a_zoo_name_starts_from_the_zoo_weights(tmp_path, counted_dir, train_cli, capsys):
    from emdenoise import zoo

    code, model_dir, _ = train_cli(
        tmp_path / "zoo", counted_dir, model="ffdnet", epochs=1, lr=0.0, init_from="zoo:hrtem-ffdnet"
    )
    assert code == 0, capsys.readouterr().err
    tuned, meta = modelfile.load_model(model_dir / "ffdnet" / "em_denoise_model.h5")
    start = _weights(zoo.get("hrtem-ffdnet").model_file)
    weights = {k: v for k, v in tuned.state_dict().items() if "running_" not in k and "num_batches" not in k}
    assert len(weights) > 20  # (the BN statistics follow the new data)
    for key, value in weights.items():  # lr 0: the zoo model's weights, fine-tuned by nothing
        np.testing.assert_allclose(start[key], value.numpy(), err_msg=key)
    assert meta["train_config"]["init_from"] == "zoo:hrtem-ffdnet"


def test_init_from_takes_the_architecture_options_from_the_model_file(tmp_path, counted_dir, train_cli, capsys):
    code, base_dir, _ = train_cli(tmp_path / "base", counted_dir, model="dncnn", dncnn_depth=3, epochs=1)
    assert code == 0
    base = base_dir / "dncnn" / "em_denoise_model.h5"
    code, tuned_dir, _ = train_cli(tmp_path / "tuned", counted_dir, model="dncnn", epochs=1, init_from=str(base))
    assert code == 0, capsys.readouterr().err  # the section's default depth gives way to the file's
    _, meta = modelfile.load_model(tuned_dir / "dncnn" / "em_denoise_model.h5")
    assert meta["options"] == {"depth": 3}
    assert "train.init_from sets the architecture options (depth: 17 -> 3)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("init_from", "expected"),
    [
        ("zoo:no-such-model", "zoo:no-such-model: train.init_from: expected one of abf-unet, haadf-unet, hrtem-ffdnet"),
        ("zoo:hrtem-ffdnet", "em_denoise_model.h5: model: expected a sciml_ae model file"),
        ("not-a-model.h5", "not-a-model.h5"),
    ],
)
def test_init_from_refuses_an_unknown_zoo_name_or_an_incompatible_file(
    tmp_path, counted_dir, train_cli, capsys, init_from, expected
):
    (tmp_path / "not-a-model.h5").write_text("not HDF5")
    spec = str(tmp_path / init_from) if init_from.endswith(".h5") else init_from
    code, _, _ = train_cli(tmp_path / "run", counted_dir, epochs=1, init_from=spec)
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line.lower()]) == 1


def test_clean_mode_on_noisy_only_data_is_refused(tmp_path, counted_dir, train_cli, capsys):
    data = tmp_path / "noisy_only"
    shutil.copytree(counted_dir, data)
    for split in ("train", "val", "test"):  # the split files rewritten without 'clean' (contract 3)
        noisy = training.load_split(data, split).noisy
        with h5safe.create_sealed(data / f"{split}.h5") as fh:
            fh.create_dataset("noisy", data=noisy, chunks=(1, *noisy.shape[1:]))
    code, _, _ = train_cli(tmp_path / "run", data, epochs=1)
    err = capsys.readouterr().err
    assert code == 2 and "train.h5: clean: expected clean images for train.supervision: clean" in err
    code, model_dir, out = train_cli(tmp_path / "n2v", data, epochs=2, supervision="noise2void")
    assert code == 0  # no clean images: validation by the self-supervised loss, the best epoch by it
    record = json.loads((out / "train_metrics.json").read_text())
    assert all(r["val_psnr"] is None and r["val_loss"] is not None for r in record["epochs"])
    # and by the Poisson-deviance consistency of the outputs with their own counts (evaluation/consistency.py)
    assert all(r["val_deviation"] is not None and r["val_deviation"] >= 0 for r in record["epochs"])
    best = min(record["epochs"], key=lambda r: r["val_loss"])
    assert record["best_epoch"] == best["epoch"] and record["best_val_loss"] == best["val_loss"]


@pytest.mark.parametrize("mode", SELF)
@pytest.mark.parametrize("name", models.names())
def test_every_architecture_trains_in_every_mode(tmp_path, counted_dir, train_cli, mode, name):
    tiny = {"dncnn_depth": 3, "unet_base": 4, "rednet_depth": 4, "msdnet_depth": 4}
    code, model_dir, out = train_cli(
        tmp_path, counted_dir, model=name, supervision=mode, epochs=1, patch_size=16, max_train_images=8, **tiny
    )
    assert code == 0
    record = json.loads((out / "train_metrics.json").read_text())["models"][name]
    assert np.isfinite(record["epochs"][0]["train_loss"]) and np.isfinite(record["epochs"][0]["val_loss"])
