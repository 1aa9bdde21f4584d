"""Scores without clean truth: an unbiased estimate of a method's MSE and PSNR from noisy data alone.

Idea (the "unbiased MSE" of noisy-target evaluation): denoise one noisy realisation ``x1`` of a signal ``s`` and
compare the output with a second realisation ``y2`` whose noise is independent of ``x1``'s and has mean zero.
Then, per pixel, ``E(f(x1) - y2)^2 = E(f(x1) - s)^2 + Var(y2)``: the measured MSE against the noisy target is
the true MSE plus the target's noise variance. With ``v`` an unbiased per-pixel estimate of ``Var(y2)`` from the
data themselves::

    uMSE = mean over pixels of [(f(x1) - y2)^2 - v]        (unbiased for the true MSE of f(x1))
    uPSNR = 10 log10(R^2 / uMSE)                            (R the data range, as in emdenoise.evaluation.metrics)

Two ways of getting the pair (:class:`Pair`):

- ``movie`` (:func:`movie_pair`): registered frames of one area, cut into two interleaved halves (frames 0, 2,
  4, ... and 1, 3, 5, ...). ``x1`` is the mean of the first half, ``y2`` the mean of the second; ``v`` is the
  sample variance across the second half's frames divided by their number (unbiased when its frames are
  independent realisations of the same signal; needs two frames or more), or with ``variance="poisson"`` the
  Poisson variance of the counts, ``y2 / (n2 s)`` for ``s`` counts per unit (given, or estimated from the
  frames: :func:`estimated_scale`). The score is the method's on the
  mean of ``n1`` frames: half the stack's dose.
- ``split`` (:func:`split_pair`): one counted frame ``c`` (integer counts, Poisson) is thinned: ``a ~
  Binomial(c, p)``, ``b = c - a``; ``a`` and ``b`` are independent Poisson counts of means ``p lam`` and
  ``(1 - p) lam`` (``lam = s x`` the expected counts, ``x`` the signal in the frame's units). ``x1 = a / (p s)``
  and ``y2 = b / ((1 - p) s)`` both have mean ``x``; ``Var y2 = x / ((1 - p) s)``, whose unbiased estimate is
  ``v = b / ((1 - p)^2 s^2)``. The score is the method's on ``x1``, i.e. at ``p`` times the frame's dose
  (``p = 0.5``: half the dose): lower doses score lower, so it is a conservative figure for the full frame.
  With a detector offset (values = offset + counts / s), ``x1`` and ``y2`` get the offset back.

The counts come from an injectable function ``to_counts(values) -> counts`` (e.g. a detector model's), else,
for a frame of detector values on an offset, from its own photon-transfer fit
(:func:`emdenoise.classical.detector.offset_counts`), else from ``values x scale`` with the scale given (the
dataset card's ``count_scale``) or estimated from the frame (:func:`emdenoise.classical.noise.estimate_count_scale`;
the map back is then exactly ``1 / scale``). With an injected function or a fitted model the map back to values
is the straight line through (counts, values), so an offset and a gain are both honoured.

Uncertainty: the per-pixel terms are averaged in blocks of :data:`BLOCK` px (images under 4 blocks a side get
smaller blocks, down to :data:`MIN_BLOCK` px); the standard error of one image's uMSE is the spread of its block
means over sqrt(blocks). Blocks much larger than a filter's reach are nearly independent; the spread also holds
the true MSE's variation over the image, which can only widen the error bar (measured, the errors over their
stated bars have a spread of 0.9-1.1: see the tests). uPSNR's standard error follows by the delta method,
``10 / ln 10 x SE(uMSE) / uMSE``. Over several images, as in the project's metrics, the PSNR is per image then
averaged (``upsnr``); the errors add in quadrature / n. A uMSE at or below zero (a method within the noise of
perfect, or too few pixels) has no uPSNR (None); and where one image's uMSE is uncertain to tens of per cent,
its uPSNR is too, so the PSNR of the mean uMSE (``upsnr_pooled``, the same for one image) is given beside it,
and methods are ranked by uMSE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

BLOCK = 32  # the blocks of the standard error, px (the consistency check's local maps use the same)
MIN_BLOCK = 8  # smaller images get smaller blocks, down to this, for at least 4 x 4 of them
DEFAULT_P = 0.5
DB = 10.0 / math.log(10.0)

Kind = Literal["movie", "split"]
CountsFn = Callable[[np.ndarray], np.ndarray]
DenoiseFn = Callable[[np.ndarray], np.ndarray]  # (B, H, W) float32 frames -> estimates of the same shape


class CannotScore(ValueError):
    """The data cannot give a score without truth (one frame of a movie, values that are not counts, ...)."""


@dataclass(frozen=True)
class Pair:
    """One input ``x1`` to denoise, the independent noisy ``target`` y2 of the same signal, and ``variance``:
    an unbiased per-pixel estimate of the target's noise variance (all (H, W) float64, the frames' units).
    ``dose_note`` says which dose a score of ``x1`` refers to. ``input_variance``: the same estimate for the
    input's noise, which the identity's uMSE must match when the assumptions hold (:func:`identity_check`)."""

    input: np.ndarray
    target: np.ndarray
    variance: np.ndarray
    kind: Kind
    dose_note: str
    input_variance: np.ndarray | None = None


@dataclass(frozen=True)
class ImageScore:
    """One image's estimate: ``umse`` and its standard error, the raw MSE against the noisy target and the
    mean subtracted target variance, the number of blocks."""

    umse: float
    umse_se: float
    measured_mse: float
    target_variance: float
    blocks: int

    def upsnr(self, data_range: float) -> tuple[float | None, float | None]:
        """(uPSNR, its standard error) in dB; (None, None) when uMSE <= 0."""
        if not self.umse > 0:
            return None, None
        return 10.0 * math.log10(data_range**2 / self.umse), DB * self.umse_se / self.umse


@dataclass(frozen=True)
class Score:
    """A method's score without truth over ``n`` images: uMSE (mean over images) with its standard error;
    ``upsnr``: uPSNR per image then averaged, the project's PSNR (None when any image's uMSE is <= 0, counted in
    ``undefined``); ``upsnr_pooled``: ``10 log10(R^2 / uMSE)`` of the mean uMSE (steadier over many small
    images; equal to ``upsnr`` for one image); the raw MSE against the noisy targets and the subtracted
    variance; ``dose_note``: which dose the score refers to."""

    method: str
    kind: Kind
    umse: float
    umse_se: float
    upsnr: float | None
    upsnr_se: float | None
    n: int
    blocks: int
    measured_mse: float
    target_variance: float
    data_range: float
    dose_note: str
    undefined: int = 0
    upsnr_pooled: float | None = None
    upsnr_pooled_se: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: floats rounded, a non-finite one (no error bar from a single block) None."""
        return {
            k: ((round(v, 7) if math.isfinite(v) else None) if isinstance(v, float) else v)
            for k, v in asdict(self).items()
        }


# --------------------------------------------------------------------------------------------------------------
# The pairs
# --------------------------------------------------------------------------------------------------------------


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the two interleaved halves (even, odd) of an n-frame stack: slow changes (drift, beam
    current, damage) fall on both alike."""
    idx = np.arange(n)
    return idx[0::2], idx[1::2]


def movie_pair(frames: np.ndarray, variance: str = "auto", scale: float | None = None) -> Pair:
    """The pair of a registered stack (T, H, W): mean of the even frames to denoise, mean of the odd frames as
    the target. ``variance``: ``frames`` (sample variance over the target's frames / their number; needs 2),
    ``poisson`` (``target / (n2 scale)``; ``scale`` counts per unit, estimated from the frames when None),
    ``auto`` (frames when the target half has 2 frames or more, else poisson)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or len(frames) < 2:
        raise CannotScore(f"a movie score needs 2 frames or more, got shape {frames.shape}")
    if variance not in ("auto", "frames", "poisson"):
        raise ValueError(f"variance: expected auto, frames or poisson, got {variance!r}")
    first, second = halves(len(frames))
    how = variance if variance != "auto" else ("frames" if len(second) >= 2 else "poisson")
    if how == "frames" and len(second) < 2:
        raise CannotScore(f"variance from the frames needs 2 target frames or more, got {len(second)} (use 4 frames)")
    v = _mean_variance(frames[second], how, scale)
    v1 = _mean_variance(frames[first], how if len(first) >= 2 else "poisson", scale)
    note = f"the mean of {len(first)} of {len(frames)} frames (dose {len(first)}/{len(frames)} of the stack's)"
    return Pair(frames[first].mean(axis=0), frames[second].mean(axis=0), v, "movie", note, v1)


def _mean_variance(part: np.ndarray, how: str, scale: float | None) -> np.ndarray:
    """Unbiased per-pixel variance of the mean of the frames ``part`` (n, H, W): their sample variance / n
    (``frames``) or the Poisson variance ``mean / (n scale)`` (``poisson``)."""
    n = len(part)
    if how == "frames":
        return part.var(axis=0, ddof=1) / n
    s = float(scale) if scale and scale > 0 else estimated_scale(part)
    return np.clip(part.mean(axis=0), 0.0, None) / (n * s)


def estimated_scale(frames: np.ndarray) -> float:
    """Counts per unit of frames stored as ``counts / s``: the median over frames of
    :func:`emdenoise.classical.noise.estimate_count_scale` (sharp detail biases it low by a few per cent)."""
    from emdenoise.classical.noise import NotCounts, estimate_count_scale

    try:
        return float(np.median([estimate_count_scale(frame) for frame in frames]))
    except NotCounts as exc:
        raise CannotScore(f"a Poisson variance needs counts: {exc}") from None


def default_counts(values: np.ndarray, scale: float) -> np.ndarray:
    """``values x scale`` rounded: the counts of a frame stored in units of ``1 / scale`` electrons."""
    return np.rint(np.clip(values, 0.0, None) * scale)


def _linear_map(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """``(offset, units per count)`` of values = offset + gain counts (least squares over the pixels)."""
    c, v = counts.ravel(), values.ravel()
    if np.ptp(c) <= 0:
        raise CannotScore("the frame's counts are all the same: nothing to split")
    gain, offset = np.polyfit(c, v, 1)
    if not gain > 0:
        raise CannotScore(f"the counts do not grow with the values (gain {gain:g})")
    if abs(offset) < 1e-9 * gain:  # round-off of a map through zero: keep zero counts at exactly zero
        offset = 0.0
    return float(offset), float(gain)


def split_pair(
    values: np.ndarray,
    rng: np.random.Generator,
    p: float = DEFAULT_P,
    scale: float | None = None,
    to_counts: CountsFn | None = None,
) -> Pair:
    """The binomial split of one counted frame (see the module notes): ``x1 = offset + gain a / p``, target
    ``offset + gain b / (1 - p)``, variance ``gain^2 b / (1 - p)^2``. ``to_counts`` maps the frame's values to
    counts (default: the frame's own detector model when it sits on an offset,
    :func:`emdenoise.classical.detector.offset_counts`; else :func:`default_counts` with ``scale``, estimated
    from the frame when None)."""
    from emdenoise.classical.detector import offset_counts

    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected 0 < p < 1, got {p}")
    values = np.asarray(values, dtype=np.float64)
    if to_counts is None and not scale:
        to_counts = offset_counts(values)
    if to_counts is None:
        s = float(scale) if scale else estimated_scale(values[None])
        counts, offset, gain = default_counts(values, s), 0.0, 1.0 / s
    else:
        counts = np.asarray(to_counts(values), dtype=np.float64)
        if counts.shape != values.shape or not np.all(np.isfinite(counts)) or counts.min(initial=0.0) < 0:
            raise CannotScore("the counts function must give finite counts >= 0 of the frame's shape")
        counts = np.rint(counts)
        offset, gain = _linear_map(values, counts)
    if np.ptp(counts) <= 0:
        raise CannotScore("the frame's counts are all the same: nothing to split")
    a = rng.binomial(counts.astype(np.int64), p).astype(np.float64)
    b = counts - a
    x1 = offset + gain * a / p
    y2 = offset + gain * b / (1.0 - p)
    v = gain * gain * b / (1.0 - p) ** 2
    note = f"the frame thinned to p = {p:g} of its counts (dose {p:g} x the frame's)"
    return Pair(x1, y2, v, "split", note, gain * gain * a / p**2)


def registered(frames: np.ndarray, log: Any = None, where: str = "frames") -> np.ndarray:
    """The frames with their drift undone (:mod:`emdenoise.data.prepare.registration`, whole pixels, cut to the
    common area); as they are, with a warning, when the drift cannot be measured."""
    from emdenoise.data.prepare import registration

    try:
        shifts = registration.register(list(frames))
    except registration.Unmeasurable as exc:
        if log is not None:
            log.warning("%s: frames scored unaligned: %s", where, exc)
        return frames
    return np.stack(registration.align(list(frames), shifts))


def pairs_of(
    frames: np.ndarray,
    kind: str = "auto",
    *,
    p: float = DEFAULT_P,
    scale: float | None = None,
    to_counts: CountsFn | None = None,
    variance: str = "auto",
    seed: int = 0,
    align: bool = True,
    log: Any = None,
    where: str = "frames",
) -> list[Pair]:
    """The pairs of ``frames`` (N, H, W): ``movie`` (one pair of the whole stack, registered first when
    ``align``), ``split`` (one binomial split per frame, seeded), ``auto`` (movie for 2 frames or more)."""
    frames = np.asarray(frames, dtype=np.float64)
    chosen = kind if kind != "auto" else ("movie" if len(frames) >= 2 else "split")
    if chosen == "movie":
        stack = registered(frames, log, where) if align else frames
        return [movie_pair(stack, variance, scale)]
    if chosen != "split":
        raise ValueError(f"kind: expected auto, movie or split, got {kind!r}")
    rng = np.random.default_rng(seed)
    return [split_pair(frame, rng, p, scale, to_counts) for frame in frames]


# --------------------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------------------


def block_means(values: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Means and pixel counts of ``values`` (H, W) in ``block`` px blocks (partial ones at the edges)."""
    h, w = values.shape
    bh, bw = max(1, -(-h // block)), max(1, -(-w // block))
    sums, counts = np.zeros((bh * block, bw * block)), np.zeros((bh * block, bw * block))
    sums[:h, :w], counts[:h, :w] = values, 1.0
    s = sums.reshape(bh, block, bw, block).sum(axis=(1, 3)).ravel()
    n = counts.reshape(bh, block, bw, block).sum(axis=(1, 3)).ravel()
    return s / n, n


def block_for(shape: tuple[int, ...]) -> int:
    """The block side of the standard error: :data:`BLOCK`, smaller for images under 4 blocks a side (down to
    :data:`MIN_BLOCK`)."""
    return int(max(MIN_BLOCK, min(BLOCK, min(shape[-2:]) // 4)))


def image_score(output: np.ndarray, pair: Pair, block: int | None = None) -> ImageScore:
    """uMSE of one ``output`` (the method's estimate from ``pair.input``) and its standard error over blocks
    (``block`` px; default :func:`block_for` the image)."""
    output = np.asarray(output, dtype=np.float64)
    block = block or block_for(output.shape)
    if output.shape != pair.target.shape:
        raise ValueError(f"output {output.shape} and target {pair.target.shape} differ in shape")
    squared = (output - pair.target) ** 2
    umse, se, nb = mean_and_error(squared - pair.variance, block)
    return ImageScore(umse, se, float(squared.mean()), float(pair.variance.mean()), nb)


def mean_and_error(terms: np.ndarray, block: int) -> tuple[float, float, int]:
    """The mean of per-pixel ``terms`` (H, W), its standard error over ``block`` px blocks (inf for one block),
    and the number of blocks."""
    means, weights = block_means(terms, block)
    mean = float(terms.mean())
    nb = len(means)
    if nb < 2:
        return mean, math.inf, nb
    w = weights / weights.sum()
    return mean, math.sqrt(float(np.sum(w * w * (means - mean) ** 2)) * nb / (nb - 1)), nb


def paired_difference(
    outputs_a: Sequence[np.ndarray], outputs_b: Sequence[np.ndarray], pairs: Sequence[Pair]
) -> tuple[float, float]:
    """uMSE(a) - uMSE(b) on the same pairs and its standard error. Per pixel it is ``(a - y2)^2 - (b - y2)^2``:
    the target's variance cancels, and so does much of its noise, so the difference of two methods is known better than
    either score (whether one method beats another: compare the difference with its error)."""
    found = []
    for a, b, pair in zip(outputs_a, outputs_b, pairs):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        found.append(mean_and_error((a - pair.target) ** 2 - (b - pair.target) ** 2, block_for(a.shape))[:2])
    n = len(found)
    return float(np.mean([m for m, _ in found])), math.sqrt(sum(se * se for _, se in found)) / n


def margins(outputs: Mapping[str, Sequence[np.ndarray]], pairs: Sequence[Pair], scores: Iterable[Score]) -> dict:
    """Every method's uMSE above the best one's (:func:`paired_difference`), ``{method: {"vs", "delta_umse",
    "se"}}``; the best method itself is left out."""
    ordered = ranked(scores)
    if not ordered:
        return {}
    best = ordered[0].method
    out = {}
    for score in ordered[1:]:
        delta, se = paired_difference(outputs[score.method], outputs[best], pairs)
        error = round(se, 9) if math.isfinite(se) else None
        out[score.method] = {"vs": best, "delta_umse": round(delta, 9), "se": error}
    return out


def combine(method: str, scores: Sequence[ImageScore], data_range: float, kind: Kind, dose_note: str) -> Score:
    """One method's :class:`Score` over images: means, errors in quadrature / n; uPSNR per image then averaged
    and of the mean uMSE."""
    if not scores:
        raise CannotScore("no image to score")
    n = len(scores)
    umse = float(np.mean([s.umse for s in scores]))
    umse_se = math.sqrt(sum(s.umse_se**2 for s in scores)) / n
    psnrs = [s.upsnr(data_range) for s in scores]
    undefined = sum(1 for value, _ in psnrs if value is None)
    upsnr = upsnr_se = None
    if not undefined:
        upsnr = float(np.mean([value for value, _ in psnrs if value is not None]))
        upsnr_se = math.sqrt(sum(se**2 for _, se in psnrs if se is not None)) / n
    pooled, pooled_se = ImageScore(umse, umse_se, 0.0, 0.0, 0).upsnr(data_range)
    return Score(
        method,
        kind,
        umse,
        umse_se,
        upsnr,
        upsnr_se,
        n,
        sum(s.blocks for s in scores),
        float(np.mean([s.measured_mse for s in scores])),
        float(np.mean([s.target_variance for s in scores])),
        float(data_range),
        dose_note,
        undefined,
        pooled,
        pooled_se,
    )


def score_method(
    name: str, denoise: DenoiseFn, pairs: Sequence[Pair], data_range: float, batch: int = 8
) -> tuple[Score, list[np.ndarray]]:
    """Denoise every pair's input with ``denoise`` (in batches of same-shaped inputs) and score it; returns
    the score and the outputs."""
    if not pairs:
        raise CannotScore("no image to score")
    outputs: list[np.ndarray] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        if len({p.input.shape for p in chunk}) == 1:
            outputs += list(np.asarray(denoise(np.stack([p.input for p in chunk]).astype(np.float32))))
        else:
            outputs += [np.asarray(denoise(p.input[None].astype(np.float32)))[0] for p in chunk]
    scores = [image_score(out, pair) for out, pair in zip(outputs, pairs)]
    kinds = {p.kind for p in pairs}
    kind: Kind = "movie" if kinds == {"movie"} else "split"
    notes = sorted({p.dose_note for p in pairs})
    note = notes[0] if len(notes) == 1 else f"{len(notes)} kinds of pairs: " + "; ".join(notes[:3])
    return combine(name, scores, data_range, kind, note), outputs


def ranked(scores: Iterable[Score]) -> list[Score]:
    """Best first: by uMSE, the steadiest of the estimates (the order of ``upsnr_pooled``)."""
    return sorted(scores, key=lambda s: s.umse)


def _margin(margin: Mapping[str, Any] | None) -> str:
    if not margin:
        return "-"
    se = margin.get("se")
    return f"{margin['delta_umse']:+.2e}" + (f" ± {se:.1e}" if se is not None else "")


def table_rows(scores: Iterable[Score], margins_: Mapping[str, Any] | None = None) -> list[list[str]]:
    """Markdown table cells of ranked scores (rank, method, kind, uPSNR +- SE per image then averaged and of the
    mean uMSE, uMSE +- SE, uMSE above the best one's (:func:`margins`), measured MSE, subtracted variance, n,
    dose): :data:`TABLE_HEADER`."""
    rows = []
    for rank, s in enumerate(ranked(scores), 1):
        psnr = "-" if s.upsnr is None else f"{s.upsnr:.2f} ± {s.upsnr_se:.2f}"
        pooled = "-" if s.upsnr_pooled is None else f"{s.upsnr_pooled:.2f} ± {s.upsnr_pooled_se:.2f}"
        rows.append(
            [
                str(rank),
                s.method,
                s.kind,
                psnr,
                pooled,
                f"{s.umse:.3e} ± {s.umse_se:.1e}",
                _margin((margins_ or {}).get(s.method)),
                f"{s.measured_mse:.3e}",
                f"{s.target_variance:.3e}",
                str(s.n),
                s.dose_note,
            ]
        )
    return rows


TABLE_HEADER = [
    "rank",
    "method",
    "pair",
    "uPSNR (dB)",
    "uPSNR of mean uMSE (dB)",
    "uMSE",
    "uMSE above the best (paired)",
    "MSE vs noisy target",
    "target variance",
    "n",
    "dose",
]
TABLE_ALIGN = "rllrrrrrrrl"


IDENTITY = "noisy"  # the identity's row name in test and emdenoise.score


def identity_check(pairs: Sequence[Pair], scores: Iterable[Score]) -> dict[str, Any] | None:
    """A check of the assumptions: the identity's uMSE (row :data:`IDENTITY`) against the input's own noise
    variance estimated the same way (``input_variance``). They agree (z within about 3) when the halves hold the
    same signal with independent noise; a uMSE well below it means the target's variance was overestimated
    (frames that differ in signal: residual drift, damage), well above it that it was underestimated
    (correlated noise); either biases every score. None without the identity row or the variances."""
    found = [s for s in scores if s.method == IDENTITY]
    if not found or any(p.input_variance is None for p in pairs):
        return None
    expected = float(np.mean([np.mean(p.input_variance) for p in pairs if p.input_variance is not None]))
    score = found[0]
    z = (score.umse - expected) / score.umse_se if score.umse_se > 0 else math.nan
    return {
        "identity_umse": round(score.umse, 9),
        "expected": round(expected, 9),
        "ratio": round(score.umse / expected, 4) if expected > 0 else None,
        "z": round(z, 2) if math.isfinite(z) else None,
    }


def check_lines(check: Mapping[str, Any] | None) -> list[str]:
    """One markdown line on :func:`identity_check` (none without it)."""
    if not check or check.get("z") is None:
        return []
    verdict = "the assumptions hold" if abs(check["z"]) <= 3 else "the assumptions FAIL: every score is biased"
    return [
        "",
        f"Check: the noisy input's uMSE {check['identity_umse']:.4g} against its own noise variance "
        f"{check['expected']:.4g} (ratio {check['ratio']}, z {check['z']:+.1f}): {verdict}.",
    ]


def summary(
    scores: Iterable[Score], margins_: Mapping[str, Any] | None = None, check: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """JSON of ranked scores with the definitions (the ``without_truth`` section of the metrics files)."""
    ordered = ranked(scores)
    return {
        "definition": (
            "uMSE = mean[(f(x1) - y2)^2 - v]: x1, y2 independent noisy halves of the same signal (movie: "
            "interleaved frame halves; split: binomial thinning of the counts), v an unbiased estimate of y2's "
            "noise variance; upsnr = 10 log10(R^2 / uMSE) per image, then averaged; upsnr_pooled: of the mean "
            f"uMSE; se: standard error over {BLOCK} px blocks (smaller in small images); ranked by uMSE; margins: "
            "each method's uMSE above the best one's on the same pairs, paired (the target noise cancels)"
        ),
        "ranking": [s.method for s in ordered],
        "methods": {s.method: s.to_json() for s in ordered},
        "margins": dict(margins_ or {}),
        "identity_check": dict(check) if check else None,
    }


def from_summary(data: Mapping[str, Any]) -> list[Score]:  # a None SE: a single block (no error bar)
    """The scores of a :func:`summary` mapping, ranked."""
    out = []
    for row in data.get("methods", {}).values():
        fields: dict[str, Any] = dict(row)
        if fields.get("umse_se") is None:
            fields["umse_se"] = math.inf
        out.append(Score(**fields))
    return out
