"""The ``denoise`` task: apply a trained model to real micrographs.

Inputs: ``input_dir`` (files selected by ``denoise.pattern``), ``model_dir`` (``<name>/em_denoise_model.h5``
as the train task writes them; ``denoise.model`` picks one, ``auto`` the only one there) and the parameters.
Outputs: ``output_dir/<same relative path>`` in the input's format and size (see :mod:`emdenoise.io.micrographs`:
float32 for TIFF, NPY, HDF5 and MRC, the input's bit depth for PNG), each with a sidecar ``<output>.json``
holding the provenance (model name and file SHA-256, emdenoise version, input file, settings, time) and the
speed; the provenance also goes inside the file where the format has room for it.

How: every input is opened first (headers only), so a bad file fails the run before any work; then each file
streams frame by frame through :class:`emdenoise.engine.tiling.Tiler` (overlapping ``tile_size`` tiles, cross-faded,
``batch_size`` tiles per model call) straight into its output, written atomically. The model normalises its
input as in training (:class:`emdenoise.engine.inference.Denoiser`). Speed is logged per file and overall in frames/s,
after one warm-up batch.

All or nothing: new outputs and their sidecars go into the hidden staging folder ``output_dir/.staging/``
(same relative paths) and are moved into place only when every input has been denoised, so a run that fails
part-way (a NaN frame in the third file, a full disk, killed) leaves the outputs of earlier runs as they were.
An output whose sidecar shows the same input (size and modification time), model file and settings, in
place or staged, is kept and not computed again, so an interrupted run resumes where it stopped; a run that
completes removes the staging folder. Moving a pair, the old sidecar goes first, then the output, then its
new sidecar: a crash in between leaves an output without a sidecar (computed again by the next run), never
an output beside another output's provenance.

Unsupported extensions among the matched files are skipped with one warning; no supported file at all, an
unreadable or corrupt file, or an ambiguous ``denoise.model`` is an input error (exit 2) naming the file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from emdenoise import __version__
from emdenoise.io import micrographs
from emdenoise.engine import runtime
from emdenoise.errors import InputError
from emdenoise.outputs import STAGING_DIR, atomic_path, promote, staging, write_json_atomic
from emdenoise.layout import MODEL_FILE, trained_models
from emdenoise.log import progress
from emdenoise.engine.tiling import Tiler

SIDECAR_SUFFIX = ".json"


def select_model(model_dir: Path, choice: str) -> tuple[str, Path]:
    """``(name, model file)`` for ``denoise.model``: a folder name in ``model_dir``, or ``auto``."""
    if not model_dir.is_dir():
        raise InputError.at(model_dir, "model_dir", "expected a folder of trained models, not found; run the "
                            "train task first")
    found = trained_models(model_dir)
    if choice == "auto":
        if len(found) == 1:
            return next(iter(found.items()))
        if not found:
            raise InputError.at(model_dir, "denoise.model", f"expected a trained model ({'<name>/' + MODEL_FILE})"
                                ", found none; run the train task first")
        raise InputError.at(model_dir, "denoise.model", f"expected one model for 'auto', found {len(found)}: "
                            f"{', '.join(found)}; set denoise.model to one of them")
    if choice not in found:
        have = f"one of {', '.join(found)}" if found else "a trained model name (none found; run train first)"
        raise InputError.at(model_dir / choice / MODEL_FILE, "denoise.model", f"expected {have}, got {choice!r}")
    return choice, found[choice]


def find_inputs(input_dir: Path, pattern: str, output_dir: Path, log) -> list[Path]:
    """The supported files matching ``pattern`` in ``input_dir``, sorted; hidden files and ``output_dir``
    (when it lies inside ``input_dir``) left out; other extensions skipped with one warning."""
    if not input_dir.is_dir():
        raise InputError.at(input_dir, "input_dir", "expected a folder of images, not found")
    if input_dir.resolve() == output_dir.resolve():
        raise InputError.at(output_dir, "output_dir", "expected a folder other than input_dir (outputs keep the "
                            "input names and would overwrite them)")
    try:
        matched = sorted(p for p in input_dir.glob(pattern) if p.is_file())
    except (ValueError, NotImplementedError) as exc:  # e.g. an absolute or malformed pattern
        raise InputError.at("parameters", "denoise.pattern", f"expected a glob relative to input_dir ({exc}), "
                            f"got {pattern!r}") from None
    out_resolved = output_dir.resolve()
    files, skipped = [], []
    for path in matched:
        rel = path.relative_to(input_dir)
        if any(part.startswith(".") for part in rel.parts) or out_resolved in path.resolve().parents:
            continue
        (files if micrographs.format_of(path) else skipped).append(path)
    if skipped:
        names = ", ".join(str(p.relative_to(input_dir)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("skipping %d file(s) with unsupported extensions: %s%s (supported: %s)", len(skipped), names,
                    more, " ".join(sorted(micrographs.FORMATS)))
    if not files:
        raise InputError.at(input_dir, "denoise.pattern", f"expected image files matching {pattern!r} (extensions "
                            f"{' '.join(sorted(micrographs.FORMATS))}), found none")
    return files


def check_tiling(section: dict[str, Any], where) -> None:
    tile, overlap = section["tile_size"], section["tile_overlap"]
    if tile and 2 * overlap > tile:
        raise InputError.at(where, "denoise.tile_overlap", f"expected at most tile_size / 2 ({tile // 2}), got "
                            f"{overlap}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fingerprint(path: Path, model_sha: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What decides an output's content: reused only when all of it matches."""
    stat = path.stat()
    return {"input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns, "model_sha256": model_sha,
            "tile_size": settings["tile_size"], "tile_overlap": settings["tile_overlap"],
            "precision": settings["precision"]}


def sidecar_of(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR_SUFFIX)


def _up_to_date(out: Path, fingerprint: dict[str, Any]) -> bool:
    sidecar = sidecar_of(out)
    if not out.is_file() or not sidecar.is_file():
        return False
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def _describe(src: micrographs.InputFile) -> str:
    shapes = {image.frame_shape for image in src.images}
    size = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
    return f"{src.frames} frame{'s' if src.frames != 1 else ''} of {size}"


def denoise_file(src: micrographs.InputFile, out: Path, tiler: Tiler, provenance: dict[str, Any], bar=None) -> int:
    """Denoise every image of ``src`` into ``out`` (same format, written atomically), frame by frame.
    Returns the number of frames; ``bar`` (a tqdm bar) advances once per frame."""
    count = 0

    def counted(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal count
        for frame in frames:
            count += 1
            if bar is not None:
                bar.update(1)
            yield frame

    with atomic_path(out) as tmp, micrographs.open_output(tmp, src, provenance) as writer:
        for image in src.images:
            writer.write(image, counted(tiler.stream(src.iter_frames(image))))
    return count


def run(ctx) -> None:
    sec = ctx.params.denoise
    log = ctx.log
    input_dir, model_dir, output_dir = ctx.paths["input_dir"], ctx.paths["model_dir"], ctx.paths["output_dir"]
    where = ctx.paths.get("parameters_file") or "parameters"
    check_tiling(sec, where)
    files = find_inputs(input_dir, sec["pattern"], output_dir, log)
    _, model_path = select_model(model_dir, sec["model"])

    # every input's header first: a bad file fails the run before any work
    frame_counts = {}
    for path in files:
        with micrographs.open_input(path) as src:
            frame_counts[path] = src.frames
            for problem in src.info.get("warnings", []):
                log.warning("%s: header: %s", path, problem)
    total_frames = sum(frame_counts.values())
    log.info("denoise: %d file(s), %d frame(s) from %s", len(files), total_frames, input_dir)

    device = runtime.resolve_device(sec["device"], "denoise.device", ctx.where)
    precision = runtime.resolve_precision(sec["precision"], device, "denoise.precision", ctx.where)
    # imported here: modelio pulls in every model module
    from emdenoise.engine.inference import Denoiser

    denoiser = Denoiser.from_file(model_path, device, precision)
    model_sha = sha256_of(model_path)
    settings = {"tile_size": sec["tile_size"], "tile_overlap": sec["tile_overlap"],
                "batch_size": sec["batch_size"], "device": str(device), "precision": precision}
    log.info("model %s (%s, sha256 %s) on %s, %s; tiles %s, overlap %d, batch %d", denoiser.name, model_path,
             model_sha[:12], device, precision, sec["tile_size"] or "off (whole frames)", sec["tile_overlap"],
             sec["batch_size"])
    tiler = Tiler(denoiser.denoise, sec["tile_size"], sec["tile_overlap"], sec["batch_size"],
                  pin_memory=device.type == "cuda")
    model_info = {"name": denoiser.name, "file": str(model_path), "sha256": model_sha,
                  "options": denoiser.meta.get("options"), "normalisation": denoiser.meta.get("normalisation"),
                  "trained_with": denoiser.meta.get("emdenoise_version")}

    staged: list[tuple[Path, Path]] = []   # (staged output, final output), moved into place at the end
    done_frames, done_seconds, reused, warmed = 0, 0.0, 0, False
    with staging(output_dir / STAGING_DIR) as stage_dir, progress(total=total_frames, desc="denoise",
                                                                   unit="frame") as bar:
        for path in files:
            rel = path.relative_to(input_dir)
            out, stage = output_dir / rel, stage_dir / rel
            fingerprint = _fingerprint(path, model_sha, settings)
            if _up_to_date(out, fingerprint):
                log.info("%s: up to date (same input, model and settings), kept", out)
                bar.update(frame_counts[path])
                reused += 1
                continue
            staged.append((stage, out))
            if _up_to_date(stage, fingerprint):
                log.info("%s: up to date in %s (finished by an interrupted run), kept", out, stage_dir)
                bar.update(frame_counts[path])
                reused += 1
                continue
            with micrographs.open_input(path) as src:
                if not warmed:  # one-off costs (allocations, kernel choice) stay out of the timing
                    plan = tiler.plan(*src.images[0].frame_shape)
                    denoiser.denoise(torch.zeros(1, 1, plan.tile_h, plan.tile_w))
                    warmed = True
                provenance = {"emdenoise_version": __version__, "created": _now(),
                              "input": {"file": str(path), "format": src.fmt,
                                        "images": [{"name": im.name, "shape": list(im.shape), "dtype": str(im.dtype)}
                                                   for im in src.images]},
                              "model": model_info, "settings": settings}
                start = time.perf_counter()
                frames = denoise_file(src, stage, tiler, provenance, bar)
                seconds = time.perf_counter() - start
                described = _describe(src)
            rate = frames / max(seconds, 1e-9)
            write_json_atomic(sidecar_of(stage), {
                **provenance,
                "output": {"file": str(out), "format": src.fmt,
                           "dtype": "float32" if src.fmt != "png" else f"uint{src.info['bits']}"},
                "frames": frames, "seconds": round(seconds, 4), "frames_per_s": round(rate, 3),
                "fingerprint": fingerprint})
            log.info("%s: %s in %.2f s (%.2f frames/s) -> %s", rel, described, seconds, rate, out)
            done_frames += frames
            done_seconds += seconds
        for stage, out in staged:   # every input succeeded: now the new outputs replace the old ones
            sidecar_of(out).unlink(missing_ok=True)
            promote(stage, out)
            promote(sidecar_of(stage), sidecar_of(out))
    if done_frames:
        log.info("denoised %d frame(s) in %.2f s: %.2f frames/s (%d tiles through the model)%s", done_frames,
                 done_seconds, done_frames / max(done_seconds, 1e-9), tiler.tiles_run,
                 f"; {reused} output(s) up to date and kept" if reused else "")
    else:
        log.info("all %d output(s) up to date, nothing to do", reused)
