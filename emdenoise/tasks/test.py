"""The ``test`` task: evaluate the trained denoisers against the noisy input and classical baselines.

Rows of the table, all scored on the same test images against the CLEAN test images:

- ``noisy``: the input itself (what doing nothing scores);
- each classical baseline of ``test.baselines`` (:mod:`emdenoise.classical.methods`), its parameter and a global
  gain/offset tuned on ``test.tune_images`` validation pairs;
- each trained model of ``test.models`` (``all``: every ``model_dir/<name>/em_denoise_model.h5``), run in
  batches of ``test.batch_size`` on ``test.device`` with ``test.precision``; a warm-up batch is run first
  and left out of the timing;
- each network of ``test.peers`` (:mod:`emdenoise.inference.peer`, the optional ``peer`` extra), the row
  ``tk_r_em_NETWORK`` of kind ``external``: tk_r_em's pretrained restorer on the flat-fielded frames, its
  gain/offset fitted on the validation pairs as the baselines' are;
- each pretrained model of ``test.zoo`` (:mod:`emdenoise.zoo`), the row ``zoo:NAME`` of kind ``pretrained``:
  trained before this run, not by it, run the same way with its own normalisation, a batch outside the pixel
  sizes it was trained on resampled as ``denoise`` does (:class:`~emdenoise.evaluation.run.Pretrained`).

Every row is a :class:`~emdenoise.method.Method` (:class:`~emdenoise.method.Identity`, a tuned
:class:`~emdenoise.classical.methods.Classical`, a :class:`~emdenoise.evaluation.run.Network`) run by the one
timed loop :func:`emdenoise.evaluation.run.run_method`. Metrics (:mod:`emdenoise.evaluation.scorer`), per image
then averaged over images (mean and population std): PSNR with the fixed data range R from the dataset card
(never from the prediction, never 255), SSIM (11x11 Gaussian window, sigma 1.5, same R), MSE; speed as
images/s and seconds per image. When the test split carries the dose, the mean PSNR per dose bin too. Where it
carries true atoms, the ``truth`` row: the clean images through the same atom detector, the ceiling.

Outputs in ``output_dir``: ``test_metrics.json``, ``per_image.csv``, ``results.md``, ``comparison.png`` (noisy /
each method / clean for ``test.figure_images`` test images) and ``psnr_bar.png``
(:mod:`emdenoise.evaluation.report`). All or nothing: every model file is loaded before any work, every
output is computed and drawn before any is written, then all are staged and committed together by one
:class:`~emdenoise.outputs.Transaction` (``test_metrics.json`` last; an old ``comparison.png`` is removed when
``test.figure_images`` is 0), so a failed run leaves the outputs of an earlier one as they were (never a new
``test_metrics.json`` beside an old ``psnr_bar.png``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emdenoise.classical import methods as classical
from emdenoise.data.splits import Split, load_card, load_split
from emdenoise.errors import InputError
from emdenoise.evaluation import noisy_test, report
from emdenoise.evaluation.records import MethodSummary, TestMetrics
from emdenoise.evaluation.report import COMPARISON, figure_indices, figures, per_image_csv
from emdenoise.evaluation.run import (
    find_models,
    find_peers,
    find_zoo,
    load_model,
    network,
    pretrained,
    run_method,
    select_baselines,
    tune_baseline,
    tune_peer,
)
from emdenoise.evaluation.scorer import Scorer, Structure, dose_bins
from emdenoise.inference.denoiser import Denoiser
from emdenoise.layout import MODEL_FILE, SPLIT_FILE
from emdenoise.method import Context, Identity, Method
from emdenoise.outputs import Transaction
from emdenoise.report.figures import write_png
from emdenoise.runtime import device as runtime
from emdenoise.runtime.task import TaskContext

GENERALISATION = "generalisation"


@dataclass
class Plan:
    """What a test run evaluates, read and checked before any work."""

    baselines: list[str]
    models: dict[str, Path]
    zoo: dict[str, Path]  # row name zoo:NAME -> the pretrained model's file
    card: dict[str, Any]
    test: Split
    val: Split | None
    generalisation: Split | None
    device: torch.device
    precision: str
    denoisers: dict[str, Denoiser]
    peers: list[str]

    @property
    def data_range(self) -> float:
        return float(self.card["data_range"])  # checked by load_card: a number > 0

    @property
    def has_clean(self) -> bool:
        """Whether the test split holds clean images (noisy-only data: ``has_clean: false``, scored without truth)."""
        return self.card.get("has_clean", True) is not False

    @property
    def pixel_size(self) -> float | None:
        value = self.card.get("pixel_size_angstrom")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _val_split(data_dir: Path, tune_images: int, test: Split, log: logging.Logger) -> Split:
    val = load_split(data_dir, "val", tune_images)
    if len(val) == 0:
        raise InputError.at(
            data_dir / "val.h5",
            "test.baselines",
            "expected validation pairs to tune "
            "the baselines on, found none; set preprocess.val_fraction > 0 and preprocess "
            "again, or set test.baselines: none",
        )
    if val.noisy.shape[1:] != test.noisy.shape[1:]:
        log.info(
            "val images are %s, test images %s: tuning on the val images as they are",
            val.noisy.shape[1:],
            test.noisy.shape[1:],
        )
    return val


def plan(ctx: TaskContext) -> Plan:
    """The baselines, models (every file loaded now: a damaged one fails the run before any work) and splits."""
    sec, log, where = ctx.params.test, ctx.log, ctx.where
    data_dir, model_dir = ctx.paths["data_dir"], ctx.paths["model_dir"]
    baseline_names = select_baselines(sec.baselines, where, log)
    model_files = find_models(sec.models, model_dir, where)
    zoo_files = find_zoo(sec.zoo, where)
    peers = find_peers(sec.peers, where)
    if not model_files and not baseline_names and not zoo_files and not peers:
        raise InputError.at(
            model_dir,
            "test.models",
            f"expected trained models (<name>/{MODEL_FILE}), found none, "
            "and test.baselines, test.zoo and test.peers are none: nothing to evaluate; run the train task first",
        )
    if not model_files:
        log.info("no trained model in %s: evaluating the noisy input and the classical baselines only", model_dir)
    card = load_card(data_dir)
    test = load_split(data_dir, "test", sec.max_test_images)
    if len(test) == 0:
        raise InputError.at(data_dir / "test.h5", "noisy", "expected at least one test pair, found none")
    has_clean = card.get("has_clean", True) is not False
    val = _val_split(data_dir, sec.tune_images, test, log) if (baseline_names or peers) and has_clean else None
    device, precision, denoisers = torch.device("cpu"), "fp32", {}
    if model_files or zoo_files:
        device = runtime.resolve_device(sec.device, "test.device", where)
        precision = runtime.resolve_precision(sec.precision, device, "test.precision", where)
        denoisers = {name: load_model(path, device, precision) for name, path in {**model_files, **zoo_files}.items()}
    gen_path = data_dir / SPLIT_FILE.format(split=GENERALISATION)
    gen = load_split(data_dir, GENERALISATION, sec.max_test_images) if gen_path.is_file() and has_clean else None
    if gen is not None and len(gen):
        log.info("%s: %d images, scored beside the test split", gen_path, len(gen))
    gen = gen if gen is not None and len(gen) else None
    return Plan(baseline_names, model_files, zoo_files, card, test, val, gen, device, precision, denoisers, peers)


def methods(p: Plan, batch_size: int, log: logging.Logger) -> list[Method]:
    """Every row as a method: the identity, each baseline tuned on the val split (noisy-only data: with its
    default settings), each trained network, each pretrained one of the zoo."""
    rows: list[Method] = [Identity()]
    for name in p.baselines:
        if p.val is None:  # no clean pairs to tune on
            rows.append(classical.build(name, Context(pixel_size=p.pixel_size)))
            continue
        rows.append(tune_baseline(name, p.val, p.data_range, log))
    for name, path in p.models.items():
        rows.append(network(name, path, p.denoisers[name], batch_size, p.data_range, log))
    for name, path in p.zoo.items():
        rows.append(pretrained(name, path, p.denoisers[name], batch_size, p.test, log))
    for name in p.peers:
        rows.append(tune_peer(name, p.val, p.data_range, log))
    return rows


def metrics_record(p: Plan, scorers: dict[str, Scorer], structure: Structure) -> TestMetrics:
    """The ``test_metrics.json`` record of the scored rows."""
    scorer = scorers["test"]
    test = scorer.split_metrics()
    gen = (
        scorers[GENERALISATION].split_metrics(len(scorers[GENERALISATION].split)) if GENERALISATION in scorers else None
    )
    return TestMetrics(
        n_images=len(p.test),
        data_range=p.data_range,
        data_range_definition=p.card.get("data_range_definition", "the dataset card's data_range"),
        image_shape=list(p.test.noisy.shape[1:]),
        device=str(p.device),
        precision=str(p.precision),
        baseline_treatment=report.BASELINE_NOTE,
        structure_settings=structure.settings(),
        pixel_size_angstrom=test.pixel_size_angstrom,
        has_atoms=test.has_atoms,
        methods=test.methods,
        truth=test.truth,
        strongest_classical=test.strongest_classical,
        generalisation=gen,
        psnr_by_dose=(
            dose_bins(p.test.dose, scorer.rows, units=p.card.get("input_units")) if p.test.dose is not None else None
        ),
    )


def write(out_dir: Path, scorers: dict[str, Scorer], metrics: TestMetrics, drawn: dict[str, Any]) -> Path | None:
    """Every output, staged then committed together (``test_metrics.json`` last); returns the stale comparison
    figure removed, if any."""
    stale = out_dir / COMPARISON if COMPARISON not in drawn and (out_dir / COMPARISON).exists() else None
    with Transaction() as tx:
        tx.write_text(out_dir / "per_image.csv", per_image_csv(scorers))
        tx.write_text(out_dir / "results.md", report.markdown(metrics))
        for name, fig in drawn.items():
            with tx.writing(out_dir / name) as tmp:
                write_png(fig, tmp)
        if stale:  # test.figure_images: 0; an old comparison would mislead
            tx.remove(stale)
        if (out_dir / noisy_test.LOCAL_MAPS).exists():  # an earlier run on noisy-only data
            tx.remove(out_dir / noisy_test.LOCAL_MAPS)
        tx.write_json(out_dir / "test_metrics.json", metrics.to_json())  # the completion marker, last
    return stale


def run(ctx: TaskContext) -> None:
    sec, log, out_dir = ctx.params.test, ctx.log, ctx.paths["output_dir"]
    p = plan(ctx)
    log.info(
        "%d test images of %dx%d, data range R = %.6g; %d baseline(s), %d model(s), %d pretrained; device %s, "
        "precision %s",
        len(p.test),
        p.test.noisy.shape[1],
        p.test.noisy.shape[2],
        p.data_range,
        len(p.baselines),
        len(p.models),
        len(p.zoo),
        p.device,
        p.precision,
    )
    if not p.has_clean:
        run_without_truth(ctx, p)
        return
    structure = Structure.of(sec)
    indices = figure_indices(len(p.test), sec.figure_images)
    scorers = {"test": Scorer(p.test, p.data_range, indices, structure, p.pixel_size)}
    if p.generalisation is not None:
        scorers[GENERALISATION] = Scorer(p.generalisation, p.data_range, [], structure, p.pixel_size)
    for method in methods(p, sec.batch_size, log):
        for each in scorers.values():
            run_method(method, each, sec.batch_size, log)
    metrics = metrics_record(p, scorers, structure)
    drawn = figures(scorers["test"], metrics, indices)
    stale = write(out_dir, scorers, metrics, drawn)
    if stale:
        log.info("removed %s from an earlier run (test.figure_images is 0)", stale)
    for line in report.text_table(metrics):
        log.info("%s", line)
    log.info("wrote %s to %s", ", ".join(["test_metrics.json", "per_image.csv", "results.md", *drawn]), out_dir)


def run_without_truth(ctx: TaskContext, p: Plan) -> None:
    """Noisy-only data: every method scored without truth (:mod:`emdenoise.evaluation.noisy_test`); writes
    ``test_metrics.json`` (the ``without_truth`` section), ``results.md`` and ``local_maps.png`` together."""
    sec, log, out_dir = ctx.params.test, ctx.log, ctx.paths["output_dir"]
    found = noisy_test.pairs(p.test, noisy_test.card_scale(p.card))
    log.info(
        "no clean images: scoring without truth on %s",
        ", ".join(f"{len(v)} {k} pair(s)" for k, v in found.items()),
    )
    rows = methods(p, sec.batch_size, log)
    scored = noisy_test.score_all(rows, found, p.data_range, p.pixel_size, sec.batch_size, sec.max_deviation)
    summaries = {m.name: MethodSummary(kind=m.kind, params=dict(m.settings)) for m in rows}
    metrics = TestMetrics(
        n_images=len(p.test),
        data_range=p.data_range,
        methods=summaries,
        data_range_definition=p.card.get("data_range_definition", "the dataset card's data_range"),
        image_shape=list(p.test.noisy.shape[1:]),
        device=str(p.device),
        precision=str(p.precision),
        baseline_treatment="default settings: no clean pairs to tune on",
        pixel_size_angstrom=p.pixel_size,
        without_truth=scored.summary(),
    )
    drawn = {noisy_test.LOCAL_MAPS: noisy_test.figure(scored, sec.max_deviation)}
    with Transaction() as tx:
        tx.write_text(out_dir / "results.md", report.markdown(metrics))
        for name, fig in drawn.items():
            with tx.writing(out_dir / name) as tmp:
                write_png(fig, tmp)
        for name in ("per_image.csv", COMPARISON, "psnr_bar.png"):  # an earlier run's, against clean images
            if (out_dir / name).exists():
                tx.remove(out_dir / name)
        tx.write_json(out_dir / "test_metrics.json", metrics.to_json())
    for line in report.text_table(metrics):
        log.info("%s", line)
    log.info("wrote test_metrics.json, results.md, %s to %s", noisy_test.LOCAL_MAPS, out_dir)
