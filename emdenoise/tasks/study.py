"""The ``study`` task: fidelity, speed and training-data needs of every model, against the classical baselines.

The original benchmark study judged every denoiser on three things (fidelity of the denoised image, speed,
and how much training data it needs) and published none of its numbers. This task reruns that study in one
command (the engine: :mod:`emdenoise.study.plan`, :mod:`emdenoise.study.run`,
:mod:`emdenoise.study.summary`). A *cell* is one model trained on one number of training
pairs; for every cell of ``study.models`` x ``study.train_sizes`` it:

1. trains the model with the training engine on the first N pairs of the train split (read once, for the
   largest N), into ``output_dir/cells/<model>-<N>/`` (model files, checkpoint, ``train_metrics.json``).
   The checkpoints make an interrupted cell resume where it stopped;
2. evaluates the best-on-val weights on the test split with the evaluation engine: per-image PSNR and SSIM
   with the dataset card's fixed data range, their mean and std, the mean PSNR per dose bin when the test
   split records the dose, and the inference speed in images/s (warm-up batch excluded);
3. writes ``output_dir/cells/<model>-<N>/result.json`` atomically. A rerun keeps every cell whose result was
   computed with the same configuration (one fingerprint per cell) and skips it; a cell whose result is
   missing (or stale, or failed) is recomputed.

The classical baselines (``study.baselines``), the peer restorer's networks (``study.peers``, kind external:
:mod:`emdenoise.inference.peer`) and the noisy input are scored once, on the same test images, tuned on
``test.tune_images`` validation pairs, and kept in ``output_dir/baselines/result.json`` the same way.

Training settings: ``study.epochs``, ``batch_size``, ``lr``, ``patch_size``, ``seed`` and ``device`` override
the ``train:`` section, which supplies everything else (optimiser, schedule, loss, precision, model options,
resume). A cell trains for ``max(epochs, ceil(min_steps / steps per epoch))`` epochs. The study runs as one
process (not under torchrun), its cells one after another.

"Beats the best classical baseline": a strictly higher mean test PSNR than the classical row with the highest
mean test PSNR; the smallest training size where a model does so is reported, or "never within the sizes run".

Outputs in ``output_dir`` (each written atomically, and rewritten after every cell so that a long study can
be followed while it runs):

- ``study.json``: every summary number: configuration, hardware, data, baselines, each cell (training record,
  test metrics, speed, dose bins), per model the PSNR at each size and the smallest size that beats the best
  baseline. Per-image values are in each cell's ``result.json``;
- ``report.md``: the tables (fidelity per model at each size and per baseline, training data needed to beat
  the best classical baseline, speed, PSNR by dose) and the figures (:mod:`emdenoise.study.report`);
- ``psnr_vs_train_size.png``, ``psnr_vs_dose.png`` (when the data record the dose), ``fidelity_vs_speed.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from emdenoise.data.splits import load_card, load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation import run as evaluation
from emdenoise.evaluation.scorer import Structure
from emdenoise.layout import SPLIT_FILE
from emdenoise.outputs import write_json_atomic, write_text_atomic
from emdenoise.runtime import device as runtime
from emdenoise.runtime import distributed
from emdenoise.runtime.task import TaskContext
from emdenoise.study import plan as study_plan
from emdenoise.study import report
from emdenoise.study import run as engine
from emdenoise.study.summary import StudySummary, summarise

SUMMARY_FILE = "study.json"
REPORT_FILE = "report.md"


def publish(out_dir: Path, summary: StudySummary) -> dict[str, str]:
    """(Re)write study.json, the figures and report.md (each atomically); returns figure key -> file name."""
    write_json_atomic(out_dir / SUMMARY_FILE, summary.to_json())
    figures = report.write_figures(out_dir, summary)
    write_text_atomic(out_dir / REPORT_FILE, report.markdown(summary, figures))
    return figures


def make_setting(ctx: TaskContext, data_dir: Path) -> study_plan.Setting:
    """What every cell shares: the card and splits read and checked, the device and precision resolved."""
    study, log, where = ctx.params.study, ctx.log, ctx.where
    card = load_card(data_dir)  # checked: data_range > 0, normalisation std > 0
    study_plan.check_inputs(study, card, data_dir, where)
    device = runtime.resolve_device(study.device, "study.device", where)
    precision = runtime.resolve_precision(ctx.params.train.precision, device, "train.precision", where)
    test = load_split(data_dir, "test", study.max_test_images)
    if len(test) == 0:
        raise InputError.at(data_dir / "test.h5", "noisy", "expected at least one test pair, found none")
    gen_file = data_dir / SPLIT_FILE.format(split="generalisation")
    gen = load_split(data_dir, "generalisation", study.max_test_images) if gen_file.is_file() else None
    pixel_size = card.get("pixel_size_angstrom")
    return study_plan.Setting(
        study,
        ctx.params.train,
        ctx.params.test.tune_images,
        data_dir,
        card,
        test,
        device,
        precision,
        log,
        where,
        gen if gen is not None and len(gen) else None,
        Structure.of(ctx.params.test),
        float(pixel_size) if isinstance(pixel_size, (int, float)) and pixel_size > 0 else None,
    )


def log_outcome(final: StudySummary, log: Any) -> None:
    """One line per model: from which training size it beats the best baseline."""
    best = final.best_baseline or {}
    for name, info in final.models.items() if best else ():
        win = info.smallest_winning_size
        log.info(
            "%s beats the best baseline (%s, %.2f dB): %s",
            name,
            best["name"],
            best["psnr_mean"],
            f"from {win} training pairs" if win is not None else report.NEVER,
        )


def run(ctx: TaskContext) -> None:
    study, log, where = ctx.params.study, ctx.log, ctx.where
    data_dir, out_dir = Path(ctx.paths["data_dir"]), Path(ctx.paths["output_dir"])
    started = time.perf_counter()
    if distributed.from_env().enabled:
        raise InputError.at(
            "WORLD_SIZE",
            None,
            "expected a single process: the study trains its cells one after "
            "another in one process; run it without torchrun",
        )

    baseline_names = evaluation.select_baselines(study.baselines, where, log, field="study.baselines")
    peers = evaluation.find_peers(study.peers, where, field="study.peers")
    setting = make_setting(ctx, data_dir)
    test, device, precision = setting.test, setting.device, setting.precision
    cells = study_plan.plan_cells(study)
    log.info(
        "study: %d cells (%s x sizes %s), %d baseline(s); %d test images of %dx%d, R = %.6g; device %s, %s",
        len(cells),
        ", ".join(dict.fromkeys(c.model for c in cells)),
        sorted(study.train_sizes),
        len(baseline_names),
        len(test),
        *test.noisy.shape[1:],
        setting.data_range,
        device,
        precision,
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    baselines = engine.run_baselines(baseline_names, setting, out_dir, peers)

    def summary(results: list[dict[str, Any]], failed: list[dict[str, Any]]) -> StudySummary:
        return summarise(setting, cells, baselines, results, failed, time.perf_counter() - started)

    results, failed = engine.run_cells(
        cells, setting, out_dir, after_cell=lambda results, failed: publish(out_dir, summary(results, failed))
    )
    final = summary(results, failed)
    figures = publish(out_dir, final)
    log_outcome(final, log)
    log.info("wrote %s, %s, %s to %s", SUMMARY_FILE, REPORT_FILE, ", ".join(figures.values()), out_dir)
    if failed:
        raise RuntimeFailure(
            f"{len(failed)} of {len(cells)} cells failed ({', '.join(r['cell'] for r in failed)}); "
            f"see {out_dir / REPORT_FILE}; a rerun retries them and keeps the others"
        )
