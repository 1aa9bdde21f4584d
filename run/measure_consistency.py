"""The hallucination check's false-alarm and detection rates (docs/explanation/consistency.md, "Measured").

    OMP_NUM_THREADS=1 .venv/bin/python run/measure_consistency.py [--n 12] [--size 256] [--zoo 12]

1. The generator's frames (graphene, and SrTiO3) at 2, 20, 200 and 2000 e/px at the beam centre, checked with
   the count scale taken from the frame (as ``denoise`` does): the truth (a correct estimate: any flag is a false
   alarm), a flat estimate (the truth's mean: the lattice erased) and the truth blurred (Gaussian, sigma 3 px).
   Prints, per material, dose and estimate, the share of frames each verdict got and each test fired on.
2. ``--zoo N``: N frames each of SrTiO3 and MoS2 (another material than the model's), and of graphene (its own),
   at 50-2000 e/px and 0.12-0.3 A/px, through the graphene zoo model (``emdenoise.denoise``, its check as
   ``denoise`` runs it) and the wiener filter. Per frame the output's error against the truth: the RMS of
   ``a x output + b - clean`` (``a``, ``b`` fitted to the truth) over the truth's standard deviation; "far from
   the truth" when the model's is above the wiener filter's. Prints how often the check flags each.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from scipy import ndimage

import emdenoise
from emdenoise.data.simulate.pairs import make_pair
from emdenoise.evaluation import consistency

DOSES = (2.0, 20.0, 200.0, 2000.0)


def estimates(clean: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "truth": clean,
        "flat": np.full_like(clean, clean.mean()),
        "blurred": ndimage.gaussian_filter(clean, 3.0),
    }


def rates(material: str, n: int, size: int) -> None:
    for dose in DOSES:
        tally: dict[str, Counter] = {}
        for i in range(n):
            noisy, clean, _ = make_pair(1000 + i, image_size=size, material=material, dose=dose)
            for name, est in estimates(clean).items():
                result = consistency.check(noisy, est)
                fired = [t.name for t in result.tests if t.fired]
                tally.setdefault(name, Counter()).update([result.verdict, *fired])
        for name, counts in tally.items():
            shares = ", ".join(f"{key} {value / n:.0%}" for key, value in sorted(counts.items()))
            print(f"{material:8s} {dose:6g} e/px  {name:8s} {shares}", flush=True)


def error(output: np.ndarray, clean: np.ndarray) -> float:
    """RMS of the output's best affine fit to the truth minus the truth, over the truth's std."""
    design = np.stack([output.ravel(), np.ones(output.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, clean.ravel(), rcond=None)
    return float(np.std(design @ coef - clean.ravel()) / np.std(clean))


def zoo(material: str, n: int, size: int) -> None:
    rows = []
    for i in range(n):
        noisy, clean, info = make_pair(2000 + i, image_size=size, material=material, dose_min=50, dose_max=2000)
        out = emdenoise.denoise(noisy, method="zoo:hrtem-ffdnet", pixel_size=info["pixel_size"])
        base = emdenoise.denoise(noisy, method="wiener", pixel_size=info["pixel_size"])
        fired = [k for k, t in out.checks[0]["tests"].items() if t["fired"]]
        rows.append((error(out.image, clean), error(base.image, clean), out.checks[0]["verdict"], fired))
        print(
            f"  {material} {info['dose']:7.1f} e/px  model {rows[-1][0]:.3f} wiener {rows[-1][1]:.3f}  "
            f"model {rows[-1][2]} {fired}  wiener {base.checks[0]['verdict']}",
            flush=True,
        )
    far = [r for r in rows if r[0] > r[1]]
    near = [r for r in rows if r[0] <= r[1]]
    flagged = lambda group: sum(r[2] == "inconsistent" for r in group)  # noqa: E731
    print(
        f"{material}: model worse than wiener on {len(far)}/{n}; flagged on {flagged(far)}/{len(far)} of those, "
        f"{flagged(near)}/{len(near)} of the others",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--zoo", type=int, default=0)
    ap.add_argument("--materials", default="graphene,srtio3")
    args = ap.parse_args()
    for material in args.materials.split(","):
        if args.n:
            rates(material, args.n, args.size)
    if args.zoo:
        for material in ("srtio3", "mos2", "graphene"):
            zoo(material, args.zoo, args.size)


if __name__ == "__main__":
    main()
