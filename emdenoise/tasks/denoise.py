"""The ``denoise`` task: apply a method to real micrographs: a trained model, a pretrained one, a classical filter.

Method (:func:`build_engine`, everything an :class:`emdenoise.method.Method`): ``denoise.method: model`` applies
the trained model ``denoise.model`` names (``auto``: the only one in ``model_dir``; a name there; ``zoo:NAME``; a
model file, a model's folder or a folder of models: :func:`emdenoise.inference.methods.find_model`);
``denoise.method: zoo:NAME`` a pretrained model; any other name a classical filter with default settings
(:func:`emdenoise.inference.methods.classical_method`).

Inputs: ``input_dir``, one micrograph file or a folder (files selected by ``denoise.pattern``), and the parameters.
Outputs: ``output_dir/<same relative path>`` in the input's format and size (see :mod:`emdenoise.io.micrographs`),
or ``<stem><denoise.suffix>.<ext>`` when a suffix is set (the command line sets ``_denoised`` and writes beside
the inputs when no output is given: :mod:`emdenoise.tasks.denoise_flags`);
each with a sidecar ``<output>.json`` holding the provenance (method, model file SHA-256, emdenoise version,
input file, settings, time) and the speed; the provenance also goes inside the file where the format has room.

How: every input's header is read first, so a bad file fails the run before any work; then each file streams
frame by frame through :class:`emdenoise.inference.denoiser.FileDenoiser` (tiles, batches, the model's own
normalisation) straight into its output. Speed is logged per file and overall in frames/s, after one warm-up.

All or nothing, through one resumable :class:`emdenoise.outputs.Transaction`: new outputs and their sidecars
are written into the hidden staging folder beside them (``output_dir/.staging/``; ``<subfolder>/.staging/``
for inputs in subfolders) and moved into place only when every input has been denoised, so a run that fails
part-way (a NaN frame in the third file, a full disk, killed) leaves the outputs of earlier runs as they were.
An output whose sidecar shows the same input (size and modification time), model file and settings, in place
or staged, is kept and not computed again, so an interrupted run resumes where it stopped; a run that
completes removes the staging folders. Each pair is committed as: old sidecar removed, image moved, new
sidecar moved; a crash in between leaves an output without a sidecar (computed again by the next run), never
an output beside another output's provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from emdenoise.errors import InputError
from emdenoise.evaluation import advice, consistency
from emdenoise.inference import methods
from emdenoise.inference.denoiser import Denoised, FileDenoiser
from emdenoise.io import micrographs
from emdenoise.layout import select_model  # noqa: F401  (tests and callers reach it here)
from emdenoise.log import progress
from emdenoise.method import Context
from emdenoise.outputs import STAGING_DIR, remove_staging, write_json_atomic
from emdenoise.runtime import device as runtime
from emdenoise.runtime import distributed
from emdenoise.runtime.task import TaskContext

SCORE_FIGURE = ".local_maps.png"  # --score: the consistency maps beside each output (never an input)
SCORE_REFERENCES = ("noisy", "gaussian", "wiener")  # --score: scored beside the method


def scored_method(ctx: TaskContext) -> str:
    """The method as :func:`emdenoise.api.score` takes it: a classical name, or the model file."""
    sec = ctx.params.denoise
    if not methods.is_model(sec.method) or sec.method != methods.MODEL:
        return sec.method  # a classical name or zoo:NAME, as the API takes them
    spec = sec.model
    if spec.startswith("zoo:"):
        return spec
    return str(methods.find_model(spec, ctx.paths.get("model_dir"), "denoise.model")[1])


def write_scores(ctx: TaskContext, outs: dict[Path, Path], device: torch.device) -> list[str | None]:
    """``denoise.score``: every input scored without truth (:func:`emdenoise.api.score`: the method, the noisy
    input, gaussian, wiener), the table logged, the scores added to the output's sidecar under
    ``scores_without_truth`` and the consistency maps drawn beside it (``<output>.local_maps.png``). An input
    that cannot be scored (one frame that is not counts, ...) is a warning: its output stands. Returns what the
    scores of each input say of the method against the filters (:func:`advice.scores_prefer`)."""
    from emdenoise import api
    from emdenoise.outputs import atomic_path
    from emdenoise.report.figures import write_png
    from emdenoise.report.local_maps import local_maps_figure

    sec, log = ctx.params.denoise, ctx.log
    method = scored_method(ctx)
    names = list(dict.fromkeys([method, *SCORE_REFERENCES]))
    prefer: list[str | None] = []
    options: dict[str, Any] = {"device": str(device), "precision": sec.precision, "tile_size": sec.tile_size}
    options |= {"tile_overlap": sec.tile_overlap, "batch_size": sec.batch_size, "memory_mb": sec.memory_mb}
    options |= {"rescale": sec.rescale, "scale_tolerance": sec.scale_tolerance, "frame_level": sec.frame_level}
    for path, out in outs.items():
        try:
            scores = api.score(path, names, kind=sec.score, pixel_size=sec.pixel_size or None, **options)
        except InputError as exc:
            log.warning("%s: not scored: %s", path, exc)
            continue
        prefer.append(advice.scores_prefer(method, [s.method for s in scores.scores], scores.margins))
        log.info("%s: scores without truth (R = %.6g):", path, scores.data_range)
        for line in scores.markdown().splitlines():
            log.info("%s", line)
        sidecar = micrographs.sidecar_of(out)
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        record["scores_without_truth"] = scores.to_json()
        write_json_atomic(sidecar, record)
        maps = {name: [local] for name, local in scores.local_maps.items()}
        fig = local_maps_figure([scores.input], maps, sec.max_deviation or 0.07, [out.name])
        with atomic_path(out.with_name(out.name + SCORE_FIGURE)) as tmp:
            write_png(fig, tmp)
    return prefer


def warn_inconsistent(log, path: Path, check: dict | None) -> None:
    """One warning line naming the input when an output disagrees with its counts (the consistency check)."""
    if check and check["inconsistent"]:
        log.warning(
            "%s: output inconsistent with its input in frame(s) %s (%s): the model may be inventing or erasing "
            "structure",
            path,
            ", ".join(map(str, check["inconsistent_frames"][:8])),
            consistency.why_flagged(check),
        )


def run(ctx: TaskContext) -> None:
    """Under torchrun each process denoises its share of the files (:func:`distributed.assign`, by frames) into
    the staging folders and rank 0 commits them all when every process has succeeded."""
    world = distributed.from_env()
    with distributed.joined(
        world, runtime.resolve_device(ctx.params.denoise.device, "denoise.device", ctx.where)
    ) as device:
        _run(ctx, world, device)


def build_engine(ctx: TaskContext, device: torch.device) -> FileDenoiser:
    """The method ``denoise.method`` names (a trained model: ``denoise.model``, or ``zoo:NAME``; or a classical
    filter), ready to apply to files."""
    sec, log = ctx.params.denoise, ctx.log
    if not methods.is_model(sec.method):
        method = methods.classical_method(sec.method, Context(pixel_size=sec.pixel_size or None))
        log.info("method %s (%s, %s)", method.name, method.kind, dict(method.settings))
        return FileDenoiser(method, device, "fp32", pixel_size=sec.pixel_size, log=log)
    spec = sec.method if sec.method != methods.MODEL else sec.model
    field = "denoise.method" if sec.method != methods.MODEL else "denoise.model"
    name, model_path = methods.find_model(spec, ctx.paths.get("model_dir"), field)
    precision = runtime.resolve_precision(sec.precision, device, "denoise.precision", ctx.where)
    engine = FileDenoiser(
        model_path,
        device,
        precision,
        sec.tile_size,
        sec.tile_overlap,
        sec.batch_size,
        pixel_size=sec.pixel_size,
        rescale=sec.rescale,
        scale_tolerance=sec.scale_tolerance,
        log=log,
        memory_mb=sec.memory_mb,
        frame_level=sec.frame_level,
    )
    tiles = (
        f"{sec.tile_size}, overlap {sec.tile_overlap}" if sec.tile_size else f"whole frames within {sec.memory_mb} MB"
    )
    log.info(
        "model %s (%s, sha256 %s) on %s, %s; tiles %s, batch %d",
        name,
        model_path,
        engine.model_sha256[:12],
        device,
        precision,
        tiles,
        sec.batch_size,
    )
    return engine


def output_name(relative: Path, suffix: str) -> Path:
    """The output's path relative to the output folder: the input's (see :func:`micrographs.output_path`), or
    with ``suffix``: ``<stem><suffix>.<ext>`` (``.tif`` for the formats written as TIFF)."""
    if not suffix:
        return micrographs.output_path(Path(), relative)
    fmt = micrographs.format_of(relative)
    ext = relative.suffix if fmt is None or micrographs.output_format(fmt) == fmt else ".tif"
    return relative.with_name(relative.stem + suffix + ext)


def _an_output(path: Path) -> bool:
    """Whether ``path`` is an earlier output of denoise (its sidecar beside it names it as the output)."""
    try:
        record = json.loads(micrographs.sidecar_of(path).read_text(encoding="utf-8"))
        return bool(Path(record["output"]["file"]).name == path.name)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def plan_outputs(ctx: TaskContext) -> tuple[dict[Path, Path], Path]:
    """``({input file: output file}, the input folder)``: ``input_dir`` may be one file or a folder (files chosen
    by ``denoise.pattern``; earlier outputs of denoise, known by their sidecars, are not inputs)."""
    sec, log = ctx.params.denoise, ctx.log
    suffix = "" if sec.suffix == "none" else sec.suffix
    given, output_dir = ctx.paths["input_dir"], ctx.paths["output_dir"]
    if given.is_file():
        if micrographs.format_of(given) is None:
            micrographs.open_input(given)  # the one-line error naming the extensions read
        folder, files = given.parent, [given]
    else:
        folder = given
        beside = given.resolve() == output_dir.resolve() and suffix
        found = micrographs.find_inputs(given, sec.pattern, given / STAGING_DIR if beside else output_dir, log)
        files = [p for p in found if not _an_output(p) and not p.name.endswith(SCORE_FIGURE)]
        if not files:
            raise InputError.at(given, "input_dir", "expected images besides the earlier outputs of denoise")
    outs = {path: output_dir / output_name(path.relative_to(folder), suffix) for path in files}
    for path, out in outs.items():
        if out.resolve() == path.resolve():
            raise InputError.at(
                out, "output_dir", "expected a folder other than the input's (the output would overwrite its input)"
            )
    return outs, folder


def _run(ctx: TaskContext, world: distributed.World, device: torch.device) -> None:
    sec, log = ctx.params.denoise, ctx.log
    outs, input_dir = plan_outputs(ctx)
    files = list(outs)
    frame_counts = micrographs.read_headers(files, log)
    log.info("denoise: %d file(s), %d frame(s) from %s", len(files), sum(frame_counts.values()), ctx.paths["input_dir"])
    engine = build_engine(ctx, device)

    done: list[Denoised] = []
    owner = dict(zip(files, distributed.assign([frame_counts[path] for path in files], world)))
    with (
        distributed.SharedTransaction(world, resumable=True) as tx,
        progress(  # under torchrun: rank 0's bar, of its own share
            total=sum(frame_counts[p] for p in files if owner[p] == world.rank),
            desc="denoise",
            unit="frame",
            disable=not world.is_main,
        ) as bar,
    ):
        for path, out in outs.items():
            fingerprint = engine.fingerprint(path)
            if engine.up_to_date(out, fingerprint):
                log.info("%s: up to date (same input, model and settings), kept", out)
                bar.update(frame_counts[path] if owner[path] == world.rank else 0)
                continue
            sidecar = micrographs.sidecar_of(out)
            tx.remove(sidecar)  # the commit order of a pair: old sidecar, image, new sidecar
            staged, staged_sidecar = tx.put(out), tx.put(sidecar)
            if owner[path] != world.rank:
                continue  # another process denoises this one
            if engine.up_to_date(staged, fingerprint):
                log.info("%s: up to date in %s (finished by an interrupted run), kept", out, staged.parent)
                bar.update(frame_counts[path])
                continue
            staged_sidecar.unlink(missing_ok=True)  # never a new staged image beside an older staged sidecar
            result = engine.denoise(path, staged, out, bar, max_deviation=sec.max_deviation or None)
            try:
                write_json_atomic(staged_sidecar, result.record)
            except BaseException:  # no staged image without its sidecar: a rerun computes it again anyway
                staged.unlink(missing_ok=True)
                raise
            warn_inconsistent(log, path, result.record.get("consistency"))
            log.info(
                "%s: %s in %.2f s (%.2f frames/s) -> %s",
                path.relative_to(input_dir),
                result.shapes,
                result.seconds,
                result.record["frames_per_s"],
                out,
            )
            done.append(result)
    for folder in sorted({out.parent for out in outs.values()} if world.is_main else ()):  # and abandoned runs'
        remove_staging(folder / STAGING_DIR)

    prefer = write_scores(ctx, outs, device) if ctx.params.denoise.score != "off" and world.is_main else []
    _summary(ctx, world, done, len(files), engine.tiles_run, prefer)


def _summary(
    ctx: TaskContext, world: distributed.World, done: list[Denoised], n_files: int, tiles_run: int, prefer: list
) -> None:
    """The run's totals (every process's) and the advice on these frames (this process's share under torchrun;
    ``prefer``: what the scores without truth said of each scored input)."""
    sec, log = ctx.params.denoise, ctx.log
    frames, computed, tiles = distributed.totals([sum(r.frames for r in done), len(done), tiles_run], world)
    (seconds,) = distributed.totals([sum(r.seconds for r in done)], world, maximum=True)  # side by side
    reused = n_files - int(computed)
    if computed:
        log.info(
            "denoised %d frame(s) in %.2f s: %.2f frames/s (%d tiles or whole frames through the method)%s",
            frames,
            seconds,
            frames / max(seconds, 1e-9),
            tiles,
            f"; {reused} output(s) up to date and kept" if reused else "",
        )
    else:
        log.info("all %d output(s) up to date, nothing to do", reused)
    if done:
        spec = sec.method if sec.method != methods.MODEL else sec.model
        verdicts = set(prefer) - {None}  # what the scores say, when every scored input says the same
        said = verdicts.pop() if len(verdicts) == 1 and None not in prefer else None
        log.info("%s", advice.for_run([r.record for r in done], advice.model_dose_range(spec), said).line())
