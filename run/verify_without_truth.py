"""Verify the scores without clean truth where the truth exists (docs/explanation/metrics.md, "Scores without
clean truth").

    OMP_NUM_THREADS=1 .venv/bin/python run/verify_without_truth.py [--images 8] [--size 256] [--frames 8]
        [--doses 20,100,1000] [--methods noisy,gaussian,wiener,zoo:hrtem-ffdnet]

Graphene images from the physics generator (:func:`emdenoise.data.simulate.pairs.clean_image`, seed 5, flat
illumination and no dead pixels, so the signal every noisy frame has for mean is the clean image itself) at each
dose (electrons per pixel): per method, the true PSNR of its outputs against the clean images (the project's
PSNR: per image with R = max - min of the clean images, then averaged) and the estimate without truth
(:mod:`emdenoise.evaluation.without_truth`) with its standard error, for both kinds of pair: ``split`` (one
frame per image, counts split binomially with p = 0.5: the score is at half the dose) and ``movie`` (``--frames``
frames per image, the interleaved halves: the score is at half the movie's dose). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

PIXEL_SIZE = 0.2  # A/px of the generated images (inside the zoo model's 0.07-0.35)


def _method(name: str):
    import emdenoise

    if name == "noisy":
        return lambda frames: np.asarray(frames)
    return lambda frames: emdenoise.denoise(frames, name, PIXEL_SIZE, max_deviation=0.0).image


def _cells(est: float | None, se: float | None, true: float) -> list[str]:
    """The estimate ± its error and its z against the truth (``-`` where undefined)."""
    if est is None or not se:
        return ["-", "-"]
    return [f"{est:.2f} ± {se:.2f}", f"{(est - true) / se:+.2f}"]


def main(argv: list[str] | None = None) -> int:
    from emdenoise.data.simulate import pairs as simulate
    from emdenoise.evaluation import without_truth as wt
    from emdenoise.evaluation.metrics import psnr_per_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--doses", default="20,100,1000")
    ap.add_argument("--methods", default="noisy,gaussian,wiener,zoo:hrtem-ffdnet")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(5)
    draw = lambda: simulate.clean_image(rng, args.size, material="graphene", pixel_size=PIXEL_SIZE)[0]
    clean = np.stack([draw() for _ in range(args.images)]).astype(np.float64)
    data_range = float(clean.max() - clean.min())
    methods = {name: _method(name) for name in args.methods.split(",")}
    print("| dose (e/px) | pair | method | true PSNR (dB) | uPSNR (dB) | z | pooled true | pooled uPSNR | z |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for dose in (float(d) for d in args.doses.split(",")):
        counts = {
            "split": [rng.poisson(c * dose)[None] for c in clean],
            "movie": [rng.poisson(c * dose, size=(args.frames, *c.shape)) for c in clean],
        }
        for kind, stacks in counts.items():
            pairs = [
                wt.split_pair(s[0] / dose, rng, 0.5, scale=dose) if kind == "split" else wt.movie_pair(s / dose)
                for s in stacks
            ]
            for name, run in methods.items():
                score, outputs = wt.score_method(name, run, pairs, data_range)
                true = psnr_per_image(np.stack(outputs), clean, data_range).double().numpy().mean()
                mse = float(np.mean((np.stack(outputs) - clean) ** 2))
                pooled = 10 * np.log10(data_range**2 / mse)
                cells = [f"{dose:g}", kind, name, f"{true:.2f}", *_cells(score.upsnr, score.upsnr_se, true)]
                cells += [f"{pooled:.2f}", *_cells(score.upsnr_pooled, score.upsnr_pooled_se, pooled)]
                print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
