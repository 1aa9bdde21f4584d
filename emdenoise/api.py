"""The Python API: denoise an array or a file in a notebook, the way ``emdenoise denoise`` does on the command line.

    import emdenoise
    movie = emdenoise.load("movie.dm4")                      # frames + pixel size (A/px) from the file
    result = emdenoise.denoise(movie, method="wiener")       # or "zoo:NAME", or a trained model's file/folder
    result.image, result.pixel_size, result.flagged          # float32 frames, A/px, frames the check flags

``denoise`` takes a 2-D frame or a stack of frames (any leading axes), a path, or what ``load`` returned; the
method is anything ``denoise --method/--model`` takes (:mod:`emdenoise.inference.methods`). As in the command
line, a trained model sees whole frames where ``memory_mb`` allows (tiles beyond it, or ``tile_size`` tiles),
frames at another pixel size than the model's are resampled to its sampling and back, a model trained on counts /
dose (the zoo's) sees each frame at that level and returns it in the frame's units (``frame_level``,
:mod:`emdenoise.inference.levels`), and every output frame is checked against its input
(:mod:`emdenoise.evaluation.consistency`, ``max_deviation``; 0: no check).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdenoise.errors import InputError

log = logging.getLogger("emdenoise.api")


@dataclass(frozen=True)
class Micrograph:
    """Frames with their calibration: ``image`` as read (its own dtype and shape), ``pixel_size`` in A/px or None,
    ``calibration`` where it came from."""

    image: np.ndarray
    pixel_size: float | None = None
    calibration: str = "none found"
    source: str = "array"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.image, dtype=dtype)


@dataclass(frozen=True)
class Denoised:
    """What :func:`denoise` returns: ``image`` float32 in the input's shape, its ``pixel_size`` (A/px, the
    input's), the frames the consistency check ``flagged`` (indices into the flattened frames), the ``method``'s
    name and ``settings``, and each frame's check."""

    image: np.ndarray
    pixel_size: float | None
    flagged: list[int]
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.image, dtype=dtype)


def load(path: str | Path, image: int = 0) -> Micrograph:
    """The ``image``-th image of a micrograph file (any format ``denoise`` reads), all its frames, and its pixel
    size."""
    from emdenoise.io import micrographs

    path = Path(path)
    with micrographs.open_input(path) as src:
        if not 0 <= image < len(src.images):
            raise InputError.at(path, "image", f"expected an index below {len(src.images)}, got {image}")
        chosen = src.images[image]
        frames = np.stack([np.asarray(chosen.read(i)) for i in range(chosen.frames)])
        return Micrograph(frames.reshape(chosen.shape), chosen.pixel_size, chosen.calibration, chosen.label(path))


def _frames(data: Any) -> tuple[Micrograph, np.ndarray]:
    """``(micrograph, float32 (N, H, W) frames)`` of an array, a path or a :class:`Micrograph`."""
    micrograph = data if isinstance(data, Micrograph) else load(data) if isinstance(data, (str, Path)) else None
    if micrograph is None:
        micrograph = Micrograph(np.asarray(data))
    image = np.asarray(micrograph.image)
    if image.ndim < 2 or min(image.shape[-2:]) < 16 or not np.issubdtype(image.dtype, np.number):
        raise InputError.at(
            micrograph.source, None, f"expected numeric frames of at least 16x16, got {image.dtype} {image.shape}"
        )
    return micrograph, image.reshape(-1, *image.shape[-2:]).astype(np.float32, copy=False)


def _method(
    method: str, pixel_size: float | None, device: str, precision: str, tiling: dict[str, Any], model_dir: Any
) -> Any:
    """The :class:`emdenoise.method.Method` ``method`` names (a trained model: a :class:`DeepMethod`)."""
    from emdenoise.inference import methods
    from emdenoise.method import Context

    looks_like_model = methods.is_model(method) or (
        method not in methods.classical_names() and not methods.is_peer(method)
    )
    if not looks_like_model:
        return methods.classical_method(method, Context(pixel_size=pixel_size), field="method")
    from emdenoise.inference.denoiser import DeepMethod, Tiling
    from emdenoise.runtime import device as runtime

    spec = "auto" if method == methods.MODEL else method
    _, path = methods.find_model(spec, Path(model_dir) if model_dir else None, field="method")
    torch_device = runtime.resolve_device(device, "device", "emdenoise.denoise")
    resolved = runtime.resolve_precision(precision, torch_device, "precision", "emdenoise.denoise")
    return DeepMethod.from_file(path, torch_device, resolved, Tiling(**tiling))


def denoise(
    data: Any,
    method: str = "wiener",
    pixel_size: float | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    tile_size: int = 0,
    tile_overlap: int = 32,
    batch_size: int = 8,
    memory_mb: int = 2048,
    rescale: str = "auto",
    scale_tolerance: float = 0.05,
    frame_level: str = "auto",
    max_deviation: float = 0.07,
    model_dir: str | Path | None = None,
) -> Denoised:
    """Denoise ``data`` (an array of frames, a file path, or a :class:`Micrograph`) with ``method``: a classical
    filter by name, ``zoo:NAME``, a model file or folder (or ``model`` with ``model_dir``). ``pixel_size`` (A/px)
    overrides the file's calibration. The keywords are the ``denoise:`` parameters of the same names."""
    from emdenoise.config import params
    from emdenoise.evaluation import consistency
    from emdenoise.inference import resample
    from emdenoise.inference.denoiser import DeepMethod, PerFrame

    # the keywords checked as the denoise: section checks them (a bad value: one InputError naming it)
    params.defaults().denoise.replace(
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        batch_size=batch_size,
        memory_mb=memory_mb,
        rescale=rescale,
        scale_tolerance=scale_tolerance,
        frame_level=frame_level,
        max_deviation=max_deviation,
        pixel_size=pixel_size or 0.0,
    )
    micrograph, frames = _frames(data)
    pixel = pixel_size or micrograph.pixel_size
    tiling: dict[str, Any] = {"tile_size": tile_size, "overlap": tile_overlap, "batch_size": batch_size}
    tiling |= {"memory_mb": memory_mb, "frame_level": frame_level}
    chosen = _method(method, pixel, device, precision, tiling, model_dir)
    engine = chosen if isinstance(chosen, DeepMethod) else PerFrame(chosen)
    if isinstance(engine, PerFrame):
        engine.context = engine.context.__class__(pixel_size=pixel)
        engine.where = micrograph.source
        outputs = list(engine.stream(frames))
    else:
        sampling = resample.plan(
            micrograph.source,
            (frames.shape[1], frames.shape[2]),
            micrograph.pixel_size,
            micrograph.calibration,
            engine.pixel_size,
            pixel_size or 0.0,
            rescale,
            scale_tolerance,
            log,
            engine.pixel_range,
        )
        outputs = list(sampling.up(engine.stream(sampling.down(iter(frames)))))
    checks = []
    if max_deviation:
        for frame, out in zip(frames, outputs):
            checks.append(consistency.check(frame, out, None, max_deviation).summary())
    flagged = [i for i, check in enumerate(checks) if check["inconsistent"]]
    for i in flagged:
        log.warning("%s: frame %d inconsistent with its input (see Denoised.checks)", micrograph.source, i)
    image = np.stack(outputs).reshape(np.shape(micrograph.image))
    return Denoised(image, pixel, flagged, chosen.name, dict(chosen.settings), checks)


DEFAULT_SCORED = ("noisy", "gaussian", "wiener")


@dataclass(frozen=True)
class Scores:
    """What :func:`score` returns: every method's :class:`~emdenoise.evaluation.without_truth.Score`, best
    first; the data range R of the PSNR; the first pair's input and each method's consistency map of it (the
    local deviation in 32 px blocks, :mod:`emdenoise.evaluation.consistency`) for figures."""

    scores: list[Any]
    data_range: float
    kind: str
    input: np.ndarray = field(repr=False)
    local_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    margins: dict[str, Any] = field(default_factory=dict)  # uMSE above the best method's, paired
    check: dict[str, Any] | None = None  # the identity's uMSE against the input's noise (the assumptions)

    def markdown(self) -> str:
        """The ranked table and the assumptions' check, markdown."""
        from emdenoise.evaluation import without_truth as wt
        from emdenoise.report.tables import table

        rows = wt.table_rows(self.scores, self.margins)
        return "\n".join([*table(wt.TABLE_HEADER, wt.TABLE_ALIGN, rows), *wt.check_lines(self.check)]) + "\n"

    def to_json(self) -> dict[str, Any]:
        from emdenoise.evaluation import without_truth as wt

        summary = wt.summary(self.scores, self.margins, self.check)
        return {"data_range": self.data_range, "kind": self.kind, **summary}


def _local_map(frame: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The consistency check's local deviation map of ``output`` against ``frame`` (empty when undefined)."""
    from emdenoise.evaluation import consistency

    return consistency.check(frame, output).local_deviation


def score(
    data: Any,
    methods: Any = DEFAULT_SCORED,
    *,
    kind: str = "auto",
    data_range: float | None = None,
    p: float = 0.5,
    scale: float | None = None,
    to_counts: Any = None,
    variance: str = "auto",
    seed: int = 0,
    align: bool = True,
    pixel_size: float | None = None,
    **denoise_options: Any,
) -> Scores:
    """Scores without clean truth (:mod:`emdenoise.evaluation.without_truth`) of ``methods`` (names as
    :func:`denoise` takes them; ``noisy`` the input itself) on ``data`` (frames, a path or a :class:`Micrograph`).

    ``kind``: ``movie`` (registered frame halves; ``align`` registers them first), ``split`` (each frame's counts
    split binomially with ``p``; the counts from ``to_counts(values)`` or ``values x scale``, the scale estimated
    when None), ``auto`` (movie for 2 frames or more). ``data_range``: R of the PSNR (default max - min of the
    frames, as the noisy-only dataset card defines it). Other keywords go to :func:`denoise`. The result holds the
    ranked scores, each method's paired margin to the best (``margins``) and, with ``noisy`` among the methods,
    the check of the assumptions (``check``: :func:`emdenoise.evaluation.without_truth.identity_check`)."""
    from emdenoise.evaluation import without_truth as wt

    micrograph, frames = _frames(data)
    names = [methods] if isinstance(methods, str) else list(methods)
    try:
        pairs = wt.pairs_of(
            frames,
            kind,
            p=p,
            scale=scale,
            to_counts=to_counts,
            variance=variance,
            seed=seed,
            align=align,
            log=log,
            where=micrograph.source,
        )
    except wt.CannotScore as exc:
        raise InputError.at(micrograph.source, "kind", str(exc)) from None
    R = float(data_range) if data_range else float(np.ptp(frames)) or 1.0
    inputs = np.stack([pair.input for pair in pairs]).astype(np.float32)
    results, maps, outputs_of = [], {}, {}
    for name in names:

        def run(batch: np.ndarray, name: str = name) -> np.ndarray:
            if name == "noisy":
                return batch
            options = {"max_deviation": 0.0, **denoise_options}
            return denoise(batch, name, pixel_size or micrograph.pixel_size, **options).image

        result, outputs_of[name] = wt.score_method(name, run, pairs, R, batch=len(pairs))
        results.append(result)
        maps[name] = _local_map(pairs[0].input, outputs_of[name][0])
    margins = wt.margins(outputs_of, pairs, results)
    check = wt.identity_check(pairs, results)
    return Scores(wt.ranked(results), R, pairs[0].kind, inputs[0], maps, margins, check)
