"""How much of a flat-fielded row's PSNR is lost to its brightness level: the peer restorer (tk_r_em) and the
Bragg filter, both flat-fielded by the beam-aware filters' fit (beam peak 1), scored three ways on a processed
``data_dir``:

- ``global``: one gain/offset fitted on the validation pairs, as ``emdenoise test`` does;
- ``frame mean``: each output divided by its own mean first (an HRTEM image's mean intensity is 1 by flux
  conservation: no clean image is used), then the global gain/offset;
- ``per-image fit``: each output's own least-squares gain/offset against its clean image (an upper bound that
  uses the truth: not a method), over the images whose clean image is not flat (a flat one, vacuum, would be
  fitted exactly: infinite PSNR).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python run/measure_peer_level.py workspace-peer/data/processed [N]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from emdenoise.classical import methods, tuning
from emdenoise.data.splits import load_split
from emdenoise.evaluation.metrics import psnr_per_image
from emdenoise.inference import peer


def _psnr(out: np.ndarray, clean: np.ndarray, data_range: float) -> float:
    return float(np.asarray(psnr_per_image(out, clean, data_range)).mean())


def scores(val_out, val_clean, out, clean, data_range: float) -> dict[str, float]:
    """The three readings of the module notes for one row's flat-fielded outputs."""
    gain, offset = tuning.fit_gain_offset(val_out, val_clean)
    by_mean = lambda x: x / x.mean(axis=(1, 2), keepdims=True)
    mean_gain, mean_offset = tuning.fit_gain_offset(by_mean(val_out), val_clean)
    structured = clean.std(axis=(1, 2)) > 0
    own = np.stack([np.polyval(np.polyfit(o.ravel(), c.ravel(), 1), o) for o, c in zip(out, clean)])
    return {
        "global": _psnr(gain * out + offset, clean, data_range),
        "frame mean": _psnr(mean_gain * by_mean(out) + mean_offset, clean, data_range),
        f"per-image fit ({int(structured.sum())} images)": _psnr(own[structured], clean[structured], data_range),
    }


def main(data_dir: Path, n: int = 0) -> None:
    card = json.loads((data_dir / "dataset_card.json").read_text())
    data_range = float(card["data_range"])
    val, test = load_split(data_dir, "val", 16), load_split(data_dir, "test", n)
    bragg = tuning.tune(methods.get("bragg"), val.noisy, val.truth, data_range)
    rows = {
        f"bragg (radius {bragg.value:g})": lambda x: np.stack([bragg.baseline.apply(f, bragg.value) for f in x]),
        "tk_r_em_sfr_lrtem": peer.build("tk_r_em_sfr_lrtem").restore,
    }
    print(f"{len(test)} test images, {len(val)} val images, R = {data_range:.6g}")
    for name, restore in rows.items():
        result = scores(restore(val.noisy), val.truth, restore(test.noisy), test.truth, data_range)
        print(name, " ".join(f"{k}: {v:.2f} dB;" for k, v in result.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
