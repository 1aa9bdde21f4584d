"""Which denoiser to trust on these frames: a pretrained model as it is, one fine-tuned on them, or a classical
filter (docs/guides/decide.md). A pure function of what a ``denoise`` run knows, so that it is tested alone and
printed by the task as one line (``advice: ...``).

The evidence, per run: each frame's consistency check (:mod:`emdenoise.evaluation.consistency`: ``verdict``
``consistent``, ``inconsistent``, ``cannot tell``; version-1 records without ``verdict`` count by their
``inconsistent``), whether the frames lie inside the model's trained range (dose and pixel size; None when
unknown), how many pixels of frames there are (enough to fine-tune on?), and, as a hook for scores without clean
truth (``emdenoise.evaluation.without_truth``; ``denoise --score``), ``scores_prefer``: ``model``, ``classical``
or None (:func:`scores_prefer`). The rule (first that applies):

1. a classical filter ran: ``classical`` (keep it) when no frame is flagged, else ``classical (gentler)``;
2. some frame flagged, or the scores prefer a classical filter, or the frames are outside the model's range:
   ``fine-tune`` with at least :data:`FINE_TUNE_PIXELS` of frames, else ``classical``;
3. no frame the check could confirm (all ``cannot tell``) and the scores do not prefer the model: ``classical``
   (an output nothing contradicts but nothing confirms is not evidence for the model);
4. otherwise ``use as is``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FINE_TUNE_PIXELS = 1_000_000  # pixels of one's own frames below which fine-tuning is not advised (see the docs)


@dataclass(frozen=True)
class Advice:
    """The advice for one run: ``choice`` (``use as is``, ``fine-tune``, ``classical``, ``classical (gentler)``)
    and ``reason`` (the evidence, in words)."""

    choice: str
    reason: str

    def line(self) -> str:
        return f"advice: {self.choice}: {self.reason}"


def _verdict(check: Mapping[str, Any]) -> str:
    if "verdict" in check:
        return str(check["verdict"])
    return "inconsistent" if check.get("inconsistent") else "consistent"


def _tally(checks: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    tally = {"consistent": 0, "inconsistent": 0, "cannot tell": 0, "undefined": 0}
    for check in checks:
        verdict = _verdict(check)
        tally[verdict] = tally.get(verdict, 0) + 1
    return tally


def advise(
    kind: str,
    checks: Sequence[Mapping[str, Any]],
    in_range: bool | None,
    pixels: int,
    scores_prefer: str | None = None,
) -> Advice:
    """The advice (module notes) for a run of a ``kind`` of method (``deep``, ``external``: a model;
    ``classical``) whose frames' checks are ``checks``, inside the model's trained range or not (``in_range``;
    None: unknown), ``pixels`` in all."""
    tally = _tally(checks)
    n, flagged, confirmed = len(checks), tally["inconsistent"], tally["consistent"]
    seen = f"{flagged} of {n} frame(s) flagged, {confirmed} confirmed, {tally['cannot tell']} cannot tell"
    if not n:
        return Advice("no advice", "no frame was checked (denoise.max_deviation 0)")
    if kind in ("classical", "input"):
        if flagged:
            return Advice("classical (gentler)", f"{seen}: the filter's output disagrees with the counts")
        return Advice("classical", f"{seen}")
    against = [
        *(["flagged by the consistency check"] if flagged else []),
        *(["scores without clean truth prefer a classical filter"] if scores_prefer == "classical" else []),
        *(["outside the model's trained dose/pixel-size range"] if in_range is False else []),
    ]
    if against:
        why = f"{seen}; {', '.join(against)}"
        if pixels >= FINE_TUNE_PIXELS:
            return Advice("fine-tune", f"{why}; {pixels / 1e6:.1f} Mpx of frames to train on")
        return Advice("classical", f"{why}; {pixels / 1e6:.2f} Mpx of frames: too few to fine-tune on")
    if not confirmed and scores_prefer != "model":
        return Advice("classical", f"{seen}: the counts cannot confirm the model's output")
    where = "inside" if in_range else "range unknown,"
    return Advice("use as is", f"{seen}; {where} the model's trained range")


def scores_prefer(method: str, ranked: Sequence[str], margins: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What scores without clean truth say of ``method`` against the other denoisers scored beside it (the noisy
    input left out): ``model`` when it ranks first and every other is worse by more than 2 standard errors of the
    paired margin, ``classical`` when another ranks first and ``method`` is worse by more than that, else None
    (the scores cannot tell them apart)."""
    others = [m for m in ranked if m not in (method, "noisy")]
    if method not in ranked or not others:
        return None

    def clearly_worse(name: str) -> bool:
        m = margins.get(name) or {}
        return m.get("se") is not None and m["delta_umse"] > 2.0 * m["se"]

    if ranked[0] == method:
        return "model" if all(clearly_worse(m) for m in others) else None
    return "classical" if ranked[0] != "noisy" and clearly_worse(method) else None


def model_dose_range(spec: str) -> list[float] | None:
    """[min, max] mean counts per pixel of a zoo model's training frames (its card's ``mean_counts_per_px``; else
    ``dose_e_per_px``, an HRTEM model's beam-centre dose, about the same), None for other methods (model files do
    not record their training dose)."""
    from emdenoise import zoo

    if not spec.startswith(zoo.PREFIX):
        return None
    card = zoo.get(spec).card()
    value = card.get("mean_counts_per_px", card.get("dose_e_per_px"))
    return [float(v) for v in value] if isinstance(value, list) and len(value) == 2 else None


def _in_range(records: Sequence[Mapping[str, Any]], dose_range: Sequence[float] | None) -> bool | None:
    """Whether the frames are inside the model's range: its pixel size (every image calibrated, so the model saw
    its own sampling: ``sampling.status`` ``matched`` or ``resampled``) and, where known, its dose range (the
    median of the frames' mean counts per pixel). None when either cannot be told."""
    statuses = [s.get("status") for r in records for s in r.get("sampling") or [{}]]
    if not statuses or any(status not in ("matched", "resampled") for status in statuses):
        return None
    counts = sorted(
        c["mean_counts"] for r in records for c in r["consistency"]["frames"] if c.get("mean_counts") is not None
    )
    if dose_range is None or not counts:
        return None
    median = counts[len(counts) // 2]
    return bool(dose_range[0] <= median <= dose_range[1])


def for_run(
    records: Sequence[Mapping[str, Any]], dose_range: Sequence[float] | None = None, scores_prefer: str | None = None
) -> Advice:
    """:func:`advise` from the sidecar records of one ``denoise`` run (its ``model.kind``, ``consistency.frames``,
    ``sampling`` and ``input.images`` shapes times ``frames``), the model's ``dose_range`` (e/px) and what scores
    without clean truth prefer (``scores_prefer``, passed on)."""
    checked = [r for r in records if r.get("consistency")]
    checks = [c for r in checked for c in r["consistency"]["frames"]]
    kind = str(records[0]["model"].get("kind", "deep")) if records else "deep"
    pixels = sum(_frame_pixels(r) * int(r.get("frames", 0)) for r in records)
    return advise(kind, checks, _in_range(checked, dose_range), pixels, scores_prefer)


def _frame_pixels(record: Mapping[str, Any]) -> int:
    shapes = [image["shape"] for image in record["input"]["images"]]
    return int(shapes[0][-1] * shapes[0][-2]) if shapes and len(shapes[0]) >= 2 else 0
