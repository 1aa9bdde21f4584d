"""The zoo's check set: a fixed small set of physics-generator pairs on which every shipped model is scored, so
that a test can tell that a model still loads and restores what its card says (``card.json`` ``check``); and
the card's scores, taken from ``emdenoise test`` runs that scored the zoo (``test.zoo``).

    python -m emdenoise.zoo.check NAME     # prints the check set's PSNR of zoo:NAME (what card.json records)
    python -m emdenoise.zoo.check NAME --card SET=test_metrics.json ...
        # writes card.json's ``check`` and ``scores``: for each SET (test, abtem, ...) the row zoo:NAME against
        # the run's strongest classical row and the truth row; a run's generalisation split becomes its own set;
        # --row zoo:OTHER takes the scores of the same weights scored under another name
    python -m emdenoise.zoo.check NAME --same-weights FILE
        # exit 0 when the model file FILE holds zoo:NAME's weights bit for bit (a reproduction by run/train-zoo.sh),
        # else 1, naming the first tensor that differs

The pairs are drawn at the model's own pixel size (its model file's ``pixel_size``), so no resampling enters the
number, in the model's imaging mode (``card.json`` ``imaging``: graphene in HRTEM at 100-2,000 e/px; graphene,
MoS2 and SrTiO3 in HAADF or ABF STEM at 10^4-10^5 electrons per probe position, in the generator's mean units);
the model runs in fp32 on the CPU, whole frames. PSNR is against the clean images, with R the clean set's max -
min, as in ``test``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

SEED = 2026
PAIRS = 6
SIZE = 128
DOSE = (100.0, 2000.0)  # HRTEM, e/px at the beam centre
STEM_DOSE = (1e4, 1e5)  # STEM, electrons per probe position


def check_set(pixel_size: float, imaging: str = "hrtem") -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean), each (PAIRS, SIZE, SIZE) float32 at ``pixel_size`` A/px, mixed optics: graphene in HRTEM,
    or graphene, MoS2 and SrTiO3 in ``imaging`` haadf or abf (values per the image's mean counts)."""
    from emdenoise.data.simulate import pairs as generator

    rng = np.random.default_rng(SEED)
    if imaging == "hrtem":
        kwargs: dict[str, Any] = {"dose_min": DOSE[0], "dose_max": DOSE[1], "pixel_size": pixel_size}
    else:
        stem = {"units": "mean", "dose_min": STEM_DOSE[0], "dose_max": STEM_DOSE[1]}
        kwargs = {"imaging": imaging, "material": "mixed", "stem_settings": stem}
        kwargs.update(pixel_size_min=pixel_size, pixel_size_max=pixel_size)
    drawn = [generator.make_pair(rng, image_size=SIZE, **kwargs) for _ in range(PAIRS)]
    return np.stack([p[0] for p in drawn]), np.stack([p[1] for p in drawn])


def check_psnr(name: str) -> float:
    """Mean PSNR (dB) of ``zoo:NAME`` on the check set."""
    from emdenoise import api, zoo
    from emdenoise.io import modelfile

    model = zoo.get(name)
    pixel = float(modelfile.load_model(model.model_file)[1]["pixel_size"])
    noisy, clean = check_set(pixel, model.card().get("imaging", "hrtem"))
    out = api.denoise(
        noisy, f"zoo:{model.name}", pixel, device="cpu", precision="fp32", frame_level="as_is", max_deviation=0
    ).image
    data_range = float(clean.max() - clean.min())
    mse = ((out.astype(np.float64) - clean) ** 2).mean(axis=(1, 2))
    return float(np.mean(10 * np.log10(data_range**2 / mse)))


def weights_differ(reference: Path, path: Path) -> str | None:
    """None when the model file at ``path`` holds the weights of the one at ``reference`` bit for bit (the same
    tensors, shapes, dtypes and bytes), else what differs first. Both files are read as model files (checked and
    sealed); their attributes (the package version, the path of the data) may differ."""
    from emdenoise.io import modelfile

    ref = modelfile.load_model(reference)[0].state_dict()
    other = modelfile.load_model(path)[0].state_dict()
    if ref.keys() != other.keys():
        return f"other tensors: {sorted(set(ref) ^ set(other))[0]}"
    for key, tensor in ref.items():
        theirs = other[key]
        if (tensor.dtype, tensor.shape) != (theirs.dtype, theirs.shape):
            got, expected = f"{theirs.dtype} {tuple(theirs.shape)}", f"{tensor.dtype} {tuple(tensor.shape)}"
            return f"state/{key} differs ({got}, expected {expected})"
        if not tensor.equal(theirs):
            largest = float((tensor.double() - theirs.double()).abs().max())
            return f"state/{key} differs (largest difference {largest:.3g})"
    return None


def _round(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _row_scores(split: dict[str, Any], row: str) -> dict[str, Any]:
    """PSNR, band PSNR and atom F1 of ``row`` in one split of ``test_metrics.json``."""
    m = split["methods"][row]
    return {
        "psnr": _round(m.get("psnr_mean"), 2),
        "band_psnr": _round(m.get("band_psnr_mean"), 2),
        "atom_f1": _round((m.get("atoms") or {}).get("f1"), 3),
        "ms_per_image": _round(1000 * m["seconds_per_image"], 1) if m.get("seconds_per_image") else None,
    }


def split_scores(split: dict[str, Any], row: str, label: str) -> dict[str, Any]:
    """What a card records of ``row`` in one split: its scores, the strongest classical row's, the truth row's
    atom F1 (the ceiling)."""
    strongest = split["strongest_classical"]["name"]
    return {
        "set": label,
        "images": split.get("n_images"),
        **_row_scores(split, row),
        "strongest_classical": {"name": strongest, **_row_scores(split, strongest)},
        "truth_atom_f1": _round((split.get("truth") or {}).get("f1"), 3),
    }


def card_scores(name: str, runs: dict[str, Path], row: str | None = None) -> dict[str, Any]:
    """The card's ``scores`` of ``zoo:NAME`` from ``emdenoise test`` runs (set name -> test_metrics.json): its
    row there, or ``row`` (the same weights scored under another name, a candidate before it was installed)."""
    import torch

    from emdenoise import __version__
    from emdenoise.errors import InputError
    from emdenoise.runtime.device import cpu_has_native_bf16, cpu_name

    row = row or f"zoo:{name}"
    bf16 = "with" if cpu_has_native_bf16() else "without"
    scores: dict[str, Any] = {
        "measured": f"{datetime.date.today()}, {cpu_name()} ({bf16} native bf16, {torch.get_num_threads()} "
        f"threads), torch {torch.__version__}, emdenoise {__version__}",
    }
    for set_name, path in runs.items():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError.at(path, None, f"expected a test_metrics.json of emdenoise test ({exc})") from None
        if row not in doc.get("methods", {}):
            raise InputError.at(path, "methods", f"expected a row {row} (run test with test.zoo: all)")
        scores[set_name] = split_scores(doc, row, f"{set_name}: {doc.get('n_images')} images ({path})")
        general = doc.get("generalisation")
        if general and row in general.get("methods", {}):
            scores[f"{set_name}_generalisation"] = split_scores(general, row, f"{set_name} generalisation split")
    return scores


def update_card(name: str, runs: dict[str, Path], row: str | None = None) -> dict[str, Any]:
    """Rewrite ``card.json`` of ``zoo:NAME`` with its check-set PSNR and the scores of ``runs`` (its row, or
    ``row``)."""
    from emdenoise import zoo
    from emdenoise.outputs import sha256_file, write_text_atomic

    model = zoo.get(name)
    card = model.card()
    card["check"] = {**card.get("check", {}), "psnr": round(check_psnr(name), 3), "seed": SEED, "pairs": PAIRS}
    imaging = card.get("imaging", "hrtem")
    dose = {"dose_e_per_px": list(DOSE)} if imaging == "hrtem" else {"dose_e_per_probe_position": list(STEM_DOSE)}
    card["check"].update(size=SIZE, imaging=imaging, **dose, command=f"python -m emdenoise.zoo.check {name}")
    card["sha256"] = sha256_file(model.model_file)
    if runs:
        card["scores"] = card_scores(name, runs, row)
    write_text_atomic(model.folder / zoo.CARD_JSON, json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    from emdenoise import zoo
    from emdenoise.errors import script

    ap = argparse.ArgumentParser(prog="python -m emdenoise.zoo.check", description=__doc__.splitlines()[0])
    ap.add_argument("name")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--card", nargs="*", metavar="SET=test_metrics.json", help="rewrite card.json from these runs")
    what.add_argument("--same-weights", type=Path, metavar="FILE", help="compare FILE's weights with zoo:NAME's")
    ap.add_argument("--row", help="the row of the runs to take (default zoo:NAME)")
    args = ap.parse_args(argv)

    if args.same_weights is not None:  # as cmp: the verdict on stdout, 1 when they differ
        differs: list[str | None] = []

        def compare() -> str:
            differs.append(weights_differ(zoo.get(args.name).model_file, args.same_weights))
            if differs[0]:
                return f"{args.same_weights}: not the weights of zoo:{args.name}: {differs[0]}"
            return f"{args.same_weights}: the same weights as zoo:{args.name}, bit for bit"

        code = script(compare)
        return 1 if code == 0 and differs[0] else code

    def work() -> str:
        if args.card is None:
            value = check_psnr(args.name)
            return f"{value:.3f}" if math.isfinite(value) else "nan"
        runs = {item.partition("=")[0]: Path(item.partition("=")[2]) for item in args.card}
        card = update_card(args.name, runs, args.row)
        return json.dumps({"check": card["check"], "scores": card.get("scores")}, indent=2)

    return script(work)


if __name__ == "__main__":
    sys.exit(main())
