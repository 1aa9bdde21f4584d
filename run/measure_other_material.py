"""Self-supervised training on another material's noisy frames alone, against the tuned classical baselines and a
graphene-trained model (README "Training without clean images").

    nice -n 5 .venv/bin/python run/measure_other_material.py WORK_DIR --graphene MODEL_FILE [--material srtio3]
        [--train 192] [--test 48] [--size 64] [--epochs 10] [--modes poisson_split,noise2void] [--dose MIN,MAX]

1. ``download`` (synthetic, ``download.material``) and ``preprocess``: ``WORK/data`` (with clean truth).
2. ``WORK/noisy``: the same train and val splits without their ``clean`` images (contract 3), so nothing clean
   reaches training or the choice of the best epoch (the self-supervised val loss chooses it).
3. Each mode trains ``sciml_ae`` on ``WORK/noisy``; ``test`` then scores those models, the graphene-trained
   ``--graphene`` model file and the tuned baselines (gaussian, median, tv, nlm: parameter and gain/offset
   tuned on val with clean truth, as always) on ``WORK/data``'s test split against its clean images.

Writes ``WORK/e/test_metrics.json`` and prints the PSNR table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from measure_self_supervised import dose_range, signal_variant, task

from emdenoise.classical.tuning import fit_gain_offset
from emdenoise.data.splits import load_card, load_split
from emdenoise.evaluation.metrics import psnr_per_image, ssim_per_image
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import h5safe

BASELINES = ["gaussian", "median", "tv", "nlm", "flat_gaussian", "bragg", "wiener", "pnlm"]


def noisy_only(data: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data, out)
    for split in ("train", "val"):
        with h5safe.open_sealed(data / f"{split}.h5") as fh:
            arrays = {k: fh[k][:] for k in fh if k != "clean" and k in ("noisy", "dose", "index")}
        (out / f"{split}.h5").unlink()
        with h5safe.create_sealed(out / f"{split}.h5") as fh:
            for key, values in arrays.items():
                fh.create_dataset(key, data=values, chunks=(1, *values.shape[1:]) if values.ndim == 3 else None)


def refit(data: Path, models: Path) -> dict[str, dict[str, float]]:
    """Each model's test PSNR/SSIM after the treatment the baselines get: a global gain/offset fitted on the val
    split (clean truth) -- the models output the noisy frames' scale (self-supervised: E[noisy]), the clean
    images of the physics generator are on another one."""
    card, val, test = load_card(data), load_split(data, "val"), load_split(data, "test")
    out = {}
    for folder in sorted(p for p in models.iterdir() if (p / "em_denoise_model.h5").is_file()):
        den = Denoiser.from_file(folder / "em_denoise_model.h5")
        pred_val = den.denoise(torch.from_numpy(val.noisy)[:, None])[:, 0].numpy()
        gain, offset = fit_gain_offset(pred_val, val.truth)
        pred = den.denoise(torch.from_numpy(test.noisy)[:, None]) * gain + offset
        truth = torch.from_numpy(test.truth)[:, None]
        out[folder.name] = {
            "psnr_mean": float(psnr_per_image(pred, truth, card["data_range"]).mean()),
            "ssim_mean": float(ssim_per_image(pred, truth, card["data_range"]).mean()),
            "gain": gain,
            "offset": offset,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--graphene", type=Path, required=True)
    ap.add_argument("--material", default="srtio3")
    ap.add_argument("--train", type=int, default=192)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--modes", default="poisson_split,noise2void")
    ap.add_argument("--dose", default="", help="MIN,MAX e/px at the beam centre (default: the generator's)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    dl = {
        "source": "synthetic",
        "material": args.material,
        "train_images": args.train,
        "test_images": args.test,
        "image_size": args.size,
        **dose_range(args.dose),
    }
    if not (work / "data" / "dataset_card.json").exists():
        task("download", work, {"download": dl}, raw_data_dir=work / "raw")
        task("preprocess", work, {}, raw_data_dir=work / "raw", data_dir=work / "data")
    noisy_only(work / "data", work / "noisy")
    models = work / "models"
    (models / "graphene_supervised").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.graphene, models / "graphene_supervised" / "em_denoise_model.h5")
    for mode in args.modes.split(","):
        train = {"model": "sciml_ae", "batch_size": 16, "lr": 1e-3, "device": "cpu", "seed": 0}
        train.update(supervision=mode, epochs=args.epochs)
        out = {"model_dir": work / f"m_{mode}", "output_dir": work / f"t_{mode}"}
        task("train", work, {"train": train}, data_dir=work / "noisy", **out)
        (models / f"self_{mode}").mkdir(exist_ok=True)
        shutil.copy(work / f"m_{mode}" / "sciml_ae" / "em_denoise_model.h5", models / f"self_{mode}")
    test = {"test": {"models": "all", "baselines": BASELINES, "device": "cpu"}}
    task("test", work, test, data_dir=work / "data", model_dir=models, output_dir=work / "e")
    metrics = json.loads((work / "e" / "test_metrics.json").read_text())
    for name, row in metrics["methods"].items():
        print(f"{name:24s} PSNR {row['psnr_mean']:.2f} dB  SSIM {row['ssim_mean']:.3f}")
    # and against the noise-free signal (clean x beam = E[noisy]), baselines tuned against it as well
    signal_variant(work / "raw", work / "data", work / "signal")
    task("test", work, test, data_dir=work / "signal", model_dir=models, output_dir=work / "e_signal")
    for name, row in json.loads((work / "e_signal" / "test_metrics.json").read_text())["methods"].items():
        print(f"{name:24s} PSNR {row['psnr_mean']:.2f} dB  SSIM {row['ssim_mean']:.3f} against clean x beam")
    refitted = refit(work / "data", models)
    (work / "e" / "refit.json").write_text(json.dumps(refitted, indent=1))
    for name, row in refitted.items():
        print(f"{name:24s} PSNR {row['psnr_mean']:.2f} dB  SSIM {row['ssim_mean']:.3f} after the val gain/offset")


if __name__ == "__main__":
    main()
