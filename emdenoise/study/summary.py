"""The study's analysis and its typed summary (``study.json``): the best baseline, the smallest training size
that beats it, each model's numbers over its cells, the rows at the largest size with the truth row."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from emdenoise import __version__
from emdenoise.evaluation.records import MethodSummary, Record, SplitMetrics
from emdenoise.evaluation.scorer import dose_bins, strongest_classical
from emdenoise.report.tables import is_number
from emdenoise.runtime.device import cpu_name
from emdenoise.study.plan import Cell, Setting

STUDY_FORMAT = "emdenoise-study/1"


@dataclass(frozen=True)
class ModelSummary(Record):
    """One model's numbers over its finished cells: PSNR and SSIM by training size (keys: the sizes as text),
    median speeds, the PSNR by dose at its largest size, the smallest size that beats the best baseline."""

    parameters: int | None
    psnr_by_size: Mapping[str, float | None]
    ssim_by_size: Mapping[str, float | None]
    images_per_s: float | None
    train_images_per_s: float | None
    largest_size: int | None
    psnr_by_dose_at_largest_size: list[float | None] | None
    smallest_winning_size: int | None
    psnr_at_smallest_winning_size: float | None

    @property
    def psnr_at_largest_size(self) -> float | None:
        return self.psnr_by_size.get(str(self.largest_size)) if self.largest_size else None


@dataclass(frozen=True)
class StudySummary(Record):
    """Everything ``study.json`` holds (per-image values stay in the cells' result files). ``cells`` stay the
    plain mappings of the cells' result files (each cell's ``test`` row a :class:`MethodSummary` mapping)."""

    NESTED: ClassVar[Mapping[str, tuple[type[Record], str]]] = {
        "baselines": (MethodSummary, "map"),
        "at_largest_size": (SplitMetrics, "one"),
        "generalisation": (SplitMetrics, "one"),
        "models": (ModelSummary, "map"),
    }
    FORMAT: ClassVar[str | None] = STUDY_FORMAT

    emdenoise_version: str
    created: str
    config: Mapping[str, Any]
    hardware: Mapping[str, Any]
    devices_used: list[str]
    data: Mapping[str, Any]
    train_sizes: list[int]
    dose_bins: Mapping[str, Any] | None
    baselines: dict[str, MethodSummary]
    best_baseline: Mapping[str, Any] | None
    structure_settings: Mapping[str, Any]
    at_largest_size: SplitMetrics
    generalisation: SplitMetrics | None
    models: dict[str, ModelSummary]
    cells: Sequence[Mapping[str, Any]]
    failed_cells: Sequence[Mapping[str, Any]]
    pending_cells: list[str]
    seconds: Mapping[str, float]
    format: str = STUDY_FORMAT

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {"format": out.pop("format"), **out}  # the format first, as before


def best_baseline(methods: Mapping[str, MethodSummary | Mapping[str, Any]]) -> tuple[str, float] | None:
    """The classical row with the highest mean PSNR, as (name, psnr); None when there is none."""
    rows = {name: MethodSummary.coerce(row) for name, row in methods.items()}
    scored = [(r.psnr_mean, n) for n, r in rows.items() if r.kind == "classical" and r.psnr_mean is not None]
    scored = [(psnr, name) for psnr, name in scored if is_number(psnr)]
    if not scored:
        return None
    psnr, name = max(scored)
    return name, float(psnr)


def smallest_winning_size(psnr_by_size: Mapping[int, float | None], target: float | None) -> int | None:
    """The smallest training size whose mean PSNR is strictly above ``target`` (None: never, or no target)."""
    if target is None or not is_number(target):
        return None
    wins = [size for size, psnr in psnr_by_size.items() if psnr is not None and is_number(psnr) and psnr > target]
    return min(wins) if wins else None


def hardware(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured."""
    info = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "emdenoise": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _model_summary(by_size: dict[int, dict[str, Any]], sizes: list[int], target: float | None) -> ModelSummary:
    """One model's numbers over its finished cells (``by_size``: training size -> cell row)."""
    psnr = {size: by_size[size]["test"]["psnr_mean"] for size in sizes if size in by_size}
    speeds = [r["test"]["images_per_s"] for r in by_size.values() if is_number(r["test"]["images_per_s"])]
    train_speeds = [r["train"]["images_per_s"] for r in by_size.values() if is_number(r["train"]["images_per_s"])]
    win = smallest_winning_size(psnr, target)
    largest = max(by_size) if by_size else None
    return ModelSummary(
        parameters=next((r["train"]["parameters"] for r in by_size.values()), None),
        psnr_by_size={str(s): v for s, v in psnr.items()},
        ssim_by_size={str(s): by_size[s]["test"]["ssim_mean"] for s in sizes if s in by_size},
        images_per_s=statistics.median(speeds) if speeds else None,
        train_images_per_s=statistics.median(train_speeds) if train_speeds else None,
        largest_size=largest,
        psnr_by_dose_at_largest_size=by_size[largest]["test"].get("psnr_by_dose") if largest else None,
        smallest_winning_size=win,
        psnr_at_smallest_winning_size=psnr.get(win) if win is not None else None,
    )


def _cell_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """A finished cell's row of ``study.json``: its training record without the per-epoch list (kept beside)."""
    row = {key: result[key] for key in ("cell", "model", "train_size", "epochs")}
    row |= {
        "train": {k: v for k, v in result["train"].items() if k != "epochs"},
        "train_epochs": result["train"]["epochs"],
        "test": result["test"],
        "evaluation_seconds": result["evaluation_seconds"],
    }
    return row | ({"generalisation": result["generalisation"]} if "generalisation" in result else {})


def _at_largest(
    rows: Mapping[str, Any], per_model: Mapping[str, Mapping[int, Mapping[str, Any]]], part: str
) -> dict[str, MethodSummary]:
    """The baselines' rows and each model's row at its largest finished size, on split ``part``."""
    methods = {name: MethodSummary.coerce(row) for name, row in rows.items()}
    for name, by_size in per_model.items():
        if by_size and part in by_size[max(by_size)]:
            methods[name] = MethodSummary.from_json(by_size[max(by_size)][part])
    return methods


def _split_part(setting: Setting, methods: dict[str, MethodSummary], split: Any, truth: Any, n: int | None):
    return SplitMetrics(
        methods,
        strongest_classical(methods),
        split.has_atoms,
        setting.scorer(split).median_pixel_size(),
        n,
        truth,
    )


def _data(setting: Setting) -> dict[str, Any]:
    card = setting.card
    return {
        "data_dir": str(setting.data_dir),
        "source": card.get("source"),
        "image_shape": card.get("image_shape"),
        "n_train_available": card["splits"]["train"]["n"],
        "n_val": (card["splits"].get("val") or {}).get("n"),
        "n_test": len(setting.test),
        "data_range": setting.data_range,
        "data_range_definition": card.get("data_range_definition"),
        "has_dose": setting.test.dose is not None,
    }


def _config(setting: Setting) -> dict[str, Any]:
    return {
        "study": setting.study.as_dict(),
        "train": {k: v for k, v in setting.train.as_dict().items() if k not in ("model", "max_train_images")},
        "test": {"tune_images": setting.tune_images},
    }


def summarise(
    setting: Setting,
    cells: list[Cell],
    baselines: dict[str, Any],
    results: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    wall_seconds: float,
) -> StudySummary:
    """The ``study.json`` record of the baselines' result and the cells' results so far."""
    study = setting.study
    methods = {name: MethodSummary.coerce(row) for name, row in baselines["methods"].items()}
    best = best_baseline(methods)
    sizes = sorted(study.train_sizes)
    cell_rows = [_cell_row(r) for r in results]
    per_model: dict[str, dict[int, dict[str, Any]]] = {cell.model: {} for cell in cells}
    for row in cell_rows:
        per_model[row["model"]][row["train_size"]] = row
    by_dose = None
    if setting.test.dose is not None:
        by_dose = {k: v for k, v in dose_bins(setting.test.dose, {}, study.dose_bins).items() if k != "methods"}
    structure = _split_part(
        setting, _at_largest(methods, per_model, "test"), setting.test, baselines.get("truth"), None
    )
    generalisation = None
    if setting.generalisation is not None and "generalisation" in baselines:
        gen = _at_largest(baselines["generalisation"], per_model, "generalisation")
        n = len(setting.generalisation)
        generalisation = _split_part(setting, gen, setting.generalisation, baselines.get("generalisation_truth"), n)
    devices = {r["test"]["device"] for r in results} | {
        r["train"]["device"] for r in results if r["train"].get("device")
    }
    done = {r["cell"] for r in results + failed}
    return StudySummary(
        emdenoise_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config=_config(setting),
        hardware=hardware(setting.device),
        devices_used=sorted(devices),
        data=_data(setting),
        train_sizes=sizes,
        dose_bins=by_dose,
        baselines=methods,
        best_baseline={"name": best[0], "psnr_mean": best[1]} if best else None,
        structure_settings=setting.structure.settings(),
        at_largest_size=structure,
        generalisation=generalisation,
        models={name: _model_summary(by_size, sizes, best[1] if best else None) for name, by_size in per_model.items()},
        cells=cell_rows,
        failed_cells=[{k: r.get(k) for k in ("cell", "model", "train_size", "error")} for r in failed],
        pending_cells=[c.name for c in cells if c.name not in done],
        seconds={
            "this_run": wall_seconds,
            "training_all_cells": sum(r["train"]["seconds"] for r in results),
            "evaluation_all_cells": sum(r["evaluation_seconds"] for r in results),
        },
    )
