"""Measure training without clean images against supervised training (README "Training without clean images").

    nice -n 5 .venv/bin/python run/measure_self_supervised.py WORK_DIR [--train 320] [--test 64] [--size 64]
        [--epochs 30] [--model sciml_ae] [--dose MIN,MAX]

Everything goes through the tasks (download, preprocess, train, test) and the engines, on the synthetic
graphene generator:

1. ``download`` (synthetic, ``--train`` + ``--test`` images of ``--size``) and ``preprocess``: ``WORK/data``.
2. ``WORK/signal``: the same splits with ``clean`` replaced by the noise-free signal the detector saw (the clean
   image times the recorded beam profile: ``E[noisy]``). Self-supervised targets are noisy frames, so what they
   can learn is that signal (the beam stays in; flat-fielding is a separate step), and scoring every mode
   against it measures the denoising alone. ``WORK/pairs``: the same, with a second, independent noisy frame of
   every training image (same dose, beam and dead-pixel fraction; a two-frame movie without drift), for
   ``frame_pairs``.
3. Each mode trains ``--model`` with the same budget (epochs, batch, lr, schedule, seed; frame_pairs gets half
   the epochs, as its training set holds every pair both ways round: the same number of optimiser steps), then
   ``test`` scores it (and, once, the tuned classical baselines) on ``WORK/signal``'s test split.

Prints one markdown table and writes ``WORK/self_supervised.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from emdenoise import cli
from emdenoise.data.simulate import pairs as synthetic
from emdenoise.io import h5safe
from emdenoise.outputs import write_json_atomic

MODES = ("clean", "noise2void", "poisson_split", "frame_pairs")
BASELINES = ["gaussian", "median", "tv", "nlm"]


def task(name: str, work: Path, params: dict, **paths: Path) -> None:
    pfile = work / f"{name}-{abs(hash(json.dumps(params, sort_keys=True, default=str))) % 10**8}.yaml"
    pfile.write_text(yaml.safe_dump(params))
    argv = [name, *(f"--{k}={v}" for k, v in paths.items()), f"--parameters_file={pfile}", f"--log_dir={work / 'logs'}"]
    code = cli.main(argv)
    if code != 0:
        sys.exit(f"{name} failed ({code}): {' '.join(argv)}")


def dose_range(arg: str) -> dict[str, float]:
    """``--dose MIN,MAX`` as download parameters ({} for the generator's default)."""
    if not arg:
        return {}
    low, high = (float(v) for v in arg.split(","))
    return {"dose_min": low, "dose_max": high}


def _signal(raw_dir: Path, split: str, index: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """clean x the beam profile each image was recorded with (the raw noisy file's per-image attributes)."""
    raw_split = "test" if split == "test" else "train"
    with h5py.File(raw_dir / raw_split / "graphene_img_noise.h5", "r") as fh:
        attrs = fh["images"].attrs
        centers, sigmas = np.asarray(attrs["beam_center_yx"]), np.asarray(attrs["beam_sigma"])
    size = clean.shape[-1]
    beams = np.stack([synthetic.beam_profile(size, centers[i], float(sigmas[i])) for i in index])
    return (clean * beams).astype(np.float32)


def _write_split(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.unlink(missing_ok=True)
    with h5safe.create_sealed(path) as fh:
        for key, values in arrays.items():
            chunks = (1, *values.shape[1:]) if values.ndim == 3 else None
            fh.create_dataset(key, data=values, chunks=chunks)


def signal_variant(raw: Path, data: Path, out: Path, second_frame: np.random.Generator | None = None) -> None:
    """``data``'s splits with ``clean`` replaced by clean x beam, and a card to match, in ``out``; with
    ``second_frame`` (a generator), the train split gains a second noisy frame of every image (stack/frame)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    stats = {}
    for split in ("train", "val", "test"):
        with h5safe.open_sealed(data / f"{split}.h5") as fh:
            arrays = {k: fh[k][:] for k in ("noisy", "clean", "index", "dose")}
        arrays["clean"] = _signal(raw, split, arrays["index"], arrays["clean"])
        if second_frame is not None and split == "train":
            arrays = _with_second_frame(raw, arrays, second_frame)
        _write_split(out / f"{split}.h5", arrays)
        stats[split] = arrays["clean"]
    card = json.loads((data / "dataset_card.json").read_text())
    card["normalisation"] = {
        "noisy": card["normalisation"]["noisy"],
        "clean": {"mean": float(stats["train"].mean()), "std": float(stats["train"].std())},
    }
    card["data_range"] = float(stats["test"].max() - stats["test"].min())
    card["data_range_definition"] = "max - min of the noise-free test signal (clean x beam)"
    write_json_atomic(out / "dataset_card.json", card)


def _with_second_frame(raw: Path, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A second, independent noisy frame of every train image (same dose, beam, dead-pixel fraction)."""
    with h5py.File(raw / "train" / "graphene_img_noise.h5", "r") as fh:
        attrs = fh["images"].attrs
        centers, sigmas = np.asarray(attrs["beam_center_yx"]), np.asarray(attrs["beam_sigma"])
    second = np.stack(
        [
            synthetic.add_noise(
                rng,
                raw_clean,
                dose=float(arrays["dose"][i]),
                beam_center_yx=centers[r],
                beam_sigma=float(sigmas[r]),
                dead_pixel_fraction=0.001,
            )[0]
            for i, (r, raw_clean) in enumerate(zip(arrays["index"], _raw_clean(raw, arrays["index"])))
        ]
    )
    n = len(arrays["noisy"])
    return {
        "noisy": np.concatenate([arrays["noisy"], second]),
        **{k: np.concatenate([arrays[k], arrays[k]]) for k in ("clean", "index", "dose")},
        "stack": np.concatenate([np.arange(n), np.arange(n)]),
        "frame": np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)]),
    }


def build_variants(work: Path, seed: int) -> None:
    """WORK/signal and WORK/pairs from WORK/data (see the module docstring)."""
    signal_variant(work / "raw", work / "data", work / "signal")
    signal_variant(work / "raw", work / "data", work / "pairs", np.random.default_rng(seed + 1))


def _raw_clean(raw: Path, index: np.ndarray) -> np.ndarray:
    with h5py.File(raw / "train" / "graphene_img_clean.h5", "r") as fh:
        images = fh["images"][:, :, :, 0]
    return images[index]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--model", default="sciml_ae")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--dose", default="", help="MIN,MAX e/px at the beam centre (default: the generator's)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    dl = {"source": "synthetic", "train_images": args.train, "test_images": args.test, "image_size": args.size}
    dl.update(dose_range(args.dose))
    if not (work / "data" / "dataset_card.json").exists():
        task("download", work, {"download": dl}, raw_data_dir=work / "raw")
        task("preprocess", work, {}, raw_data_dir=work / "raw", data_dir=work / "data")
    if not (work / "pairs" / "dataset_card.json").exists():
        build_variants(work, 0)
    base = {"model": args.model, "batch_size": 16, "lr": 1e-3, "device": "cpu", "seed": 0}
    results: dict[str, dict] = {}
    for mode in args.modes.split(","):
        data = work / ("pairs" if mode == "frame_pairs" else "signal")
        epochs = max(1, args.epochs // 2) if mode == "frame_pairs" else args.epochs
        train = {**base, "supervision": mode, "epochs": epochs}
        task(
            "train", work, {"train": train}, data_dir=data, model_dir=work / f"m_{mode}", output_dir=work / f"t_{mode}"
        )
        test = {"test": {"models": "all", "baselines": BASELINES if mode == "clean" else "none", "device": "cpu"}}
        task("test", work, test, data_dir=work / "signal", model_dir=work / f"m_{mode}", output_dir=work / f"e_{mode}")
        results[mode] = json.loads((work / f"e_{mode}" / "test_metrics.json").read_text())
    write_json_atomic(work / "self_supervised.json", results)
    print(json.dumps({m: list(r.keys()) for m, r in results.items()})[:2000])


if __name__ == "__main__":
    main()
