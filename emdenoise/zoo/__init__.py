"""The model zoo: pretrained denoisers shipped inside the package, used with no training and no network.

Each model is a folder of this package (package data, so it is there after ``pip install`` and from any
working folder)::

    emdenoise/zoo/<name>/
      em_denoise_model.h5   the weights, an ordinary model file (emdenoise.io.modelfile)
      card.md               the model card: training data and ranges, the command, the scores, where not to use it
      card.json             the card's machine-readable fields (CARD_FIELDS), for ``emdenoise zoo``

``emdenoise zoo`` lists them; ``emdenoise denoise --model zoo:NAME`` and ``emdenoise.denoise(..., method="zoo:NAME")``
apply one; ``emdenoise test`` scores those of ``test.zoo`` beside the trained models (kind ``pretrained``,
:class:`emdenoise.evaluation.run.Pretrained`). Folders named in the environment variable ``EMDENOISE_ZOO``
(separated by ``os.pathsep``) are searched first, laid out the same way: a lab's own pretrained models, found by
name like the shipped ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emdenoise.errors import InputError

ZOO_DIR = Path(__file__).resolve().parent
PREFIX = "zoo:"
MODEL_FILE = "em_denoise_model.h5"  # as emdenoise.layout.MODEL_FILE (not imported: this module stays light)
CARD = "card.md"
CARD_JSON = "card.json"
ENV = "EMDENOISE_ZOO"
# card.json: what the table shows. scores: {"test": {"psnr", "band_psnr", "atom_f1", "strongest_classical":
# {"name", "psnr", "band_psnr", "atom_f1"}}, ...}; ranges as [low, high]. Optional: imaging (hrtem, haadf, abf:
# the check set's mode, emdenoise.zoo.check; default hrtem), mean_counts_per_px (the training frames' range, which
# the denoise advice compares with a user's frames; default dose_e_per_px)
CARD_FIELDS = ("architecture", "imaging_mode", "pixel_size_angstrom", "dose_e_per_px", "command", "scores")


@dataclass(frozen=True)
class ZooModel:
    name: str
    folder: Path

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def card_file(self) -> Path:
        return self.folder / CARD

    def card(self) -> dict[str, Any]:
        """``card.json`` (an empty dict when the folder has none); an unreadable one is an InputError."""
        path = self.folder / CARD_JSON
        if not path.is_file():
            return {}
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError.at(path, None, f"expected a JSON model card ({exc})") from None
        if not isinstance(card, dict):
            raise InputError.at(path, None, f"expected a JSON object, got {type(card).__name__}")
        return card


def roots() -> list[Path]:
    """Where models are looked for: the ``EMDENOISE_ZOO`` folders, then the package's own."""
    extra = [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    return [*extra, ZOO_DIR]


def models() -> dict[str, ZooModel]:
    """Every pretrained model, by name (a name in an ``EMDENOISE_ZOO`` folder hides the shipped one)."""
    found: dict[str, ZooModel] = {}
    for root in roots():
        for model in sorted(root.glob(f"*/{MODEL_FILE}")) if root.is_dir() else ():
            found.setdefault(model.parent.name, ZooModel(model.parent.name, model.parent))
    return dict(sorted(found.items()))


def get(name: str, field: str = "model") -> ZooModel:
    """The model ``name`` (``zoo:`` prefix allowed); an InputError naming the choices when there is none."""
    name = name.removeprefix(PREFIX)
    found = models()
    if name not in found:
        have = f"one of {', '.join(found)}" if found else "a pretrained model (none installed)"
        raise InputError.at(f"{PREFIX}{name}", field, f"expected {have}; list them with: emdenoise zoo")
    return found[name]


def _range(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]:g}-{value[1]:g}"
    return "?" if value is None else str(value)


def _gain(card: dict[str, Any]) -> str:
    """``+1.63 dB`` (PSNR on the test set over the strongest classical row), or ``?``."""
    test = (card.get("scores") or {}).get("test") or {}
    classical = test.get("strongest_classical") or {}
    if isinstance(test.get("psnr"), (int, float)) and isinstance(classical.get("psnr"), (int, float)):
        return f"{test['psnr'] - classical['psnr']:+.2f} dB vs {classical.get('name', 'classical')}"
    return "?"


def table() -> str:
    """The zoo as a markdown table (what ``emdenoise zoo`` prints)."""
    rows = [
        "| name | architecture | imaging mode | A/px | e/px | PSNR vs classical | MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in models().items():
        card = model.card()
        rows.append(
            f"| zoo:{name} | {card.get('architecture', '?')} | {card.get('imaging_mode', '?')} | "
            f"{_range(card.get('pixel_size_angstrom'))} | {_range(card.get('dose_e_per_px'))} | {_gain(card)} | "
            f"{model.model_file.stat().st_size / 2**20:.1f} |"
        )
    if len(rows) == 2:
        rows.append("| (none installed) | | | | | | |")
    return "\n".join(rows)
