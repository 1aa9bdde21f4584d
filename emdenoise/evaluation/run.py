"""Running the methods: which models and baselines to score, the one timed loop that runs any
:class:`~emdenoise.method.Method` over a split (:func:`run_method`; the test task and the study share it), a
trained network as a method (:class:`Network`), a pretrained one of the model zoo (:class:`Pretrained`) and a
baseline tuned then run (:func:`tune_baseline`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdenoise import zoo
from emdenoise.classical import methods as classical
from emdenoise.classical import tuning
from emdenoise.classical.filters import NotCounts
from emdenoise.config.params import Names
from emdenoise.data.splits import Split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation.scorer import Row, Scorer
from emdenoise.inference import resample
from emdenoise.inference.denoiser import Denoiser
from emdenoise.layout import MODEL_FILE, trained_models
from emdenoise.log import progress
from emdenoise.method import Context, Kind, Method

# --------------------------------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------------------------------


def _names(value: Names, field: str, where: str | Path) -> list[str] | str:
    """A validated names value: 'all', [] for 'none', or the list itself."""
    if value == "all":
        return "all"
    if "none" in value:
        if len(value) > 1:
            raise InputError.at(where, field, f"expected 'none' alone, got {value}")
        return []
    return list(value)


def select_baselines(
    value: Names, where: str | Path, log: logging.Logger | None, field: str = "test.baselines"
) -> list[str]:
    """The baselines to run; BM3D ones asked for by name but not installed are an input error naming ``field``."""
    names = _names(value, field, where)
    if isinstance(names, str):  # all
        installed = list(classical.available())
        skipped = [n for n in classical.BASELINES if n not in installed]
        if skipped and log is not None:
            log.info(
                "%s: all: skipping %s (needs the optional bm3d package: %s)",
                field,
                ", ".join(skipped),
                classical.BM3D_INSTALL,
            )
        return installed
    for name in names:
        package = classical.missing_package(name)
        if package:
            raise InputError.at(
                where,
                field,
                f"{name!r} needs the optional {package} package, which "
                f"is not installed: {classical.BM3D_INSTALL}; or remove {name!r}",
            )
    return names


def find_models(value: Names, model_dir: Path, where: str | Path) -> dict[str, Path]:
    """Row name -> model file. ``all`` finds every ``model_dir/<name>/em_denoise_model.h5``."""
    names = _names(value, "test.models", where)
    if isinstance(names, str):  # all
        if not model_dir.is_dir():
            raise InputError.at(
                model_dir,
                "test.models",
                "expected a folder of trained models, not found; run the "
                "train task first, or set test.models: none to evaluate the baselines only",
            )
        return trained_models(model_dir)
    found = {}
    for name in names:
        path = model_dir / name / MODEL_FILE
        if not path.is_file():
            raise InputError.at(
                path,
                "test.models",
                f"expected a trained {name!r} model file; run the train "
                f"task with train.model including {name!r}, or remove it from test.models",
            )
        found[name] = path
    return found


def find_zoo(value: Names, where: str | Path) -> dict[str, Path]:
    """Row name (``zoo:NAME``) -> model file of each pretrained model of ``test.zoo`` (``all``: every one
    installed, :func:`emdenoise.zoo.models`)."""
    names = _names(value, "test.zoo", where)
    found = zoo.models() if isinstance(names, str) else {name: zoo.get(name, "test.zoo") for name in names}
    return {f"{zoo.PREFIX}{name}": model.model_file for name, model in found.items()}


def find_peers(value: Names, where: str | Path, field: str = "test.peers") -> list[str]:
    """The peer rows of ``test.peers`` (:mod:`emdenoise.inference.peer`; ``all``: every network installed), each
    network loaded now; a name asked for without the optional extra is an input error naming it."""
    from emdenoise.inference import peer

    names = _names(value, field, where)
    names = list(peer.installed()) if isinstance(names, str) else names
    if value == "all" and not names:
        raise InputError.at(where, field, f"all: no peer network is installed: {peer.INSTALL}")
    for name in names:
        try:
            peer.build(name)
        except peer.PeerMissing as exc:
            raise InputError.at(where, field, f"{exc}; or set {field}: none") from None
    return names


def tune_peer(name: str, val: Split | None, data_range: float, log: logging.Logger) -> Method:
    """Peer row ``name``, its gain/offset fitted on the validation pairs (``val`` None: 1 and 0)."""
    from emdenoise.inference import peer

    method = peer.build(name)
    if val is None:
        return method
    method = peer.tuned(method, val.noisy, val.truth, data_range)
    log.info(
        "%s: external peer (%s %s), gain %.4g, offset %.4g (val PSNR %.2f dB on %d images)",
        name,
        peer.PACKAGE,
        peer.VERSION,
        method.gain,
        method.offset,
        method.val_psnr,
        method.tuned_on,
    )
    return method


# --------------------------------------------------------------------------------------------------------------
# Trained networks as methods
# --------------------------------------------------------------------------------------------------------------


def load_model(path: Path, device: torch.device, precision: str) -> Denoiser:
    """The :class:`~emdenoise.inference.denoiser.Denoiser` of one model file (a damaged file is an InputError
    naming it)."""
    return Denoiser.from_file(path, device, precision)


@dataclass(frozen=True)
class Network:
    """A trained network as a :class:`~emdenoise.method.Method`: frames in batches through its
    :class:`~emdenoise.inference.denoiser.Denoiser` on its device and precision; out of GPU memory is a
    :class:`~emdenoise.errors.RuntimeFailure` naming the file and the batch size."""

    name: str
    denoiser: Denoiser = field(repr=False)
    path: Path
    batch_size: int
    kind: Kind = "deep"

    @property
    def settings(self) -> Mapping[str, Any]:
        meta = self.denoiser.meta
        return {
            "model": self.denoiser.name,
            "options": meta.get("options", {}),
            "parameters": meta.get("parameters"),
            "file": str(self.path),
            "batch_size": self.batch_size,
        }

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        try:
            with torch.inference_mode():
                noisy = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)[:, None])
                output = self.denoiser.denoise(noisy.to(self.denoiser.device)).float().cpu()
        except torch.cuda.OutOfMemoryError:
            raise RuntimeFailure(
                f"{self.path}: out of GPU memory at test.batch_size={self.batch_size}; lower test.batch_size"
            ) from None
        return output[:, 0].numpy()

    def warm_up(self, frames: np.ndarray, context: Context) -> None:
        """One batch run and thrown away: the first call's set-up costs are left out of the timing."""
        self(frames, context)


def network(
    name: str, path: Path, denoiser: Denoiser, batch_size: int, data_range: float, log: logging.Logger
) -> Network:
    """The network of model file ``path``, warning when it was trained on another data range."""
    trained_range = denoiser.meta.get("data_range")
    if trained_range and not math.isclose(trained_range, data_range, rel_tol=1e-5):
        log.warning(
            "%s: trained with data range %.6g, this test set has %.6g: another dataset?",
            path,
            trained_range,
            data_range,
        )
    return Network(name, denoiser, path, batch_size)


SCALE_TOLERANCE = 0.05  # as denoise.scale_tolerance's default: pixel sizes this close count as the same


@dataclass(frozen=True)
class Pretrained(Network):
    """A model of the zoo as a method: trained before this run, on data of its own (its file records the
    normalisation, applied by its :class:`~emdenoise.inference.denoiser.Denoiser`, and the pixel sizes it was
    trained on). As ``denoise`` does (:func:`emdenoise.inference.resample.plan`), a batch whose pixel size (the
    batch's median, :func:`context_of`) lies inside the trained range goes as it is, one outside it is resampled
    to the nearer end, denoised and resampled back; an unknown pixel size goes as it is."""

    kind: Kind = "pretrained"

    @property
    def settings(self) -> Mapping[str, Any]:
        meta = self.denoiser.meta
        return {
            **super().settings,
            "source": "model zoo: pretrained, not trained by this run",
            "pixel_size_range": meta.get("pixel_size_range"),
            "trained_data_range": meta.get("data_range"),
        }

    def sampling(self, shape: tuple[int, int], pixel_size: float | None) -> resample.Sampling:
        meta = self.denoiser.meta
        return resample.plan(
            self.path,
            shape,
            pixel_size,
            "the test split's pixel_size",
            meta.get("pixel_size"),
            0.0,
            "auto",
            SCALE_TOLERANCE,
            model_range=meta.get("pixel_size_range"),
        )

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        sampling = self.sampling((int(frames.shape[1]), int(frames.shape[2])), context.pixel_size)
        if sampling.status != "resampled":
            return super().__call__(frames, context)
        outputs = super().__call__(np.stack(list(sampling.down(iter(frames)))), context)
        return np.stack(list(sampling.up(iter(outputs))))


def pretrained(
    name: str, path: Path, denoiser: Denoiser, batch_size: int, split: Split, log: logging.Logger
) -> Pretrained:
    """The zoo model of file ``path`` as a method, logging how ``split``'s pixel sizes sit in its trained range."""
    sizes = None if split.pixel_size is None else np.asarray(split.pixel_size, dtype=np.float64)
    span = denoiser.meta.get("pixel_size_range")
    if sizes is None or not span or not (np.isfinite(sizes) & (sizes > 0)).all():
        log.info("%s: pretrained (model zoo); pixel size unknown: the images go to it as they are", name)
    else:
        low, high = float(span[0]) * (1 - SCALE_TOLERANCE), float(span[1]) * (1 + SCALE_TOLERANCE)
        log.info(
            "%s: pretrained (model zoo) on %.3g-%.3g A/px; test images %.3g-%.3g A/px, %d of %d outside that "
            "range (a batch whose median lies outside is resampled to the nearer end and back, as denoise does)",
            name,
            span[0],
            span[1],
            sizes.min(),
            sizes.max(),
            int(((sizes < low) | (sizes > high)).sum()),
            len(sizes),
        )
    return Pretrained(name, denoiser, path, batch_size)


# --------------------------------------------------------------------------------------------------------------
# The one timed loop
# --------------------------------------------------------------------------------------------------------------


def context_of(split: Split, start: int, stop: int, pixel_size: float | None) -> Context:
    """What a method may know about images ``start .. stop - 1`` of ``split``: the pixel size (the split's
    median over the batch, else ``pixel_size``) and the dose; the count scale is left for the methods to
    estimate (the deep models do not get it either)."""
    if split.pixel_size is not None:
        sizes = np.asarray(split.pixel_size[start:stop], dtype=np.float64)
        sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
        pixel_size = float(np.median(sizes)) if sizes.size else None
    dose = None if split.dose is None else np.asarray(split.dose[start:stop], dtype=np.float64)
    return Context(pixel_size=pixel_size, dose=dose)


def run_method(method: Method, scorer: Scorer, batch_size: int, log: logging.Logger | None = None) -> Row:
    """Run ``method`` over ``scorer``'s split in batches of ``batch_size`` and score every output: the one loop
    of every row. Only the method's calls are timed (not the scoring); a method with a ``warm_up`` is warmed
    up on the first batch first; the input row (kind ``input``) is not timed."""
    split = scorer.split
    row = scorer.add_row(method.name, method.kind, dict(method.settings))
    warm_up = getattr(method, "warm_up", None)
    if warm_up is not None and len(split):
        warm_up(split.noisy[:batch_size], context_of(split, 0, batch_size, scorer.default_pixel_size))
    with progress(total=len(split), desc=method.name, unit="img") as bar:
        for first in range(0, len(split), batch_size):
            stop = min(first + batch_size, len(split))
            context = context_of(split, first, stop, scorer.default_pixel_size)
            t0 = time.perf_counter()
            outputs = method(split.noisy[first:stop], context)
            row.seconds += time.perf_counter() - t0
            scorer.score(row, first, outputs)
            bar.update(stop - first)
    if log is not None and row.timed:
        speed = len(split) / row.seconds if row.seconds else float("inf")
        where = method.denoiser.device if isinstance(method, Network) else "cpu"
        log.info("%s: %.1f images/s on %s", method.name, speed, where)
    return row


def tune_baseline(name: str, val: Split, data_range: float, log: logging.Logger) -> classical.Classical:
    """Baseline ``name`` tuned on the validation pairs (a progress bar, one log line)."""
    baseline = classical.get(name)
    with progress(total=tuning.tuning_steps(baseline, len(val)), desc=f"tune {name}", unit="img") as bar:
        try:
            tuned = tuning.tune(baseline, val.noisy, val.truth, data_range, on_step=lambda: bar.update(1))
        except NotCounts as exc:  # a beam-aware filter on data that cannot be counts
            raise InputError.at(
                f"{val.name}.h5",
                "test.baselines",
                f"{name} needs images of counts: {exc}; leave the beam-aware filters out of test.baselines",
            ) from None
    assert tuned.tuning is not None
    log.info(
        "%s: %s = %s (val PSNR %.2f dB on %d images), gain %.4g, offset %.4g",
        name,
        baseline.param,
        baseline.shown(tuned.value),
        tuned.tuning.tune_psnr,
        tuned.tuning.n_tune,
        tuned.gain,
        tuned.offset,
    )
    return tuned
