"""The ``denoise`` task: apply a trained model to real micrographs.

Inputs: ``input_dir`` (files selected by ``denoise.pattern``), ``model_dir`` (``<name>/em_denoise_model.h5``
as the train task writes them; ``denoise.model`` picks one, ``auto`` the only one there) and the parameters.
Outputs: ``output_dir/<same relative path>`` in the input's format and size (see :mod:`emdenoise.io.micrographs`),
each with a sidecar ``<output>.json`` holding the provenance (model name and file SHA-256, emdenoise version,
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

from pathlib import Path

import torch

from emdenoise.inference.denoiser import Denoised, FileDenoiser
from emdenoise.io import micrographs
from emdenoise.layout import select_model
from emdenoise.log import progress
from emdenoise.outputs import STAGING_DIR, remove_staging, write_json_atomic
from emdenoise.runtime import device as runtime
from emdenoise.runtime import distributed
from emdenoise.tasks.context import TaskContext


def warn_inconsistent(log, path: Path, check: dict | None) -> None:
    """One warning line naming the input when an output disagrees with its counts (the consistency check)."""
    if check and check["inconsistent"]:
        log.warning(
            "%s: output inconsistent with its input in frame(s) %s (Poisson deviance implies a relative error "
            "of %.3g > denoise.max_deviation %.3g): the model may be inventing or erasing structure",
            path,
            ", ".join(map(str, check["inconsistent_frames"][:8])),
            check["worst_deviation"],
            check["max_deviation"],
        )


def run(ctx: TaskContext) -> None:
    """Under torchrun each process denoises its share of the files (:func:`distributed.assign`, by frames) into
    the staging folders and rank 0 commits them all when every process has succeeded."""
    world = distributed.from_env()
    with distributed.joined(
        world, runtime.resolve_device(ctx.params.denoise.device, "denoise.device", ctx.where)
    ) as device:
        _run(ctx, world, device)


def _run(ctx: TaskContext, world: distributed.World, device: torch.device) -> None:
    sec, log = ctx.params.denoise, ctx.log
    input_dir, model_dir, output_dir = ctx.paths["input_dir"], ctx.paths["model_dir"], ctx.paths["output_dir"]
    files = micrographs.find_inputs(input_dir, sec.pattern, output_dir, log)
    _, model_path = select_model(model_dir, sec.model)
    frame_counts = micrographs.read_headers(files, log)
    log.info("denoise: %d file(s), %d frame(s) from %s", len(files), sum(frame_counts.values()), input_dir)

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
    )
    log.info(
        "model %s (%s, sha256 %s) on %s, %s; tiles %s, overlap %d, batch %d",
        engine.denoiser.name,
        model_path,
        engine.model_sha256[:12],
        device,
        precision,
        sec.tile_size or "off (whole frames)",
        sec.tile_overlap,
        sec.batch_size,
    )

    done: list[Denoised] = []
    outs = {path: micrographs.output_path(output_dir, path.relative_to(input_dir)) for path in files}
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

    frames, computed, tiles = distributed.totals(
        [sum(r.frames for r in done), len(done), engine.tiler.tiles_run], world
    )
    (seconds,) = distributed.totals([sum(r.seconds for r in done)], world, maximum=True)  # side by side
    reused = len(files) - int(computed)
    if computed:
        log.info(
            "denoised %d frame(s) in %.2f s: %.2f frames/s (%d tiles through the model)%s",
            frames,
            seconds,
            frames / max(seconds, 1e-9),
            tiles,
            f"; {reused} output(s) up to date and kept" if reused else "",
        )
    else:
        log.info("all %d output(s) up to date, nothing to do", reused)
