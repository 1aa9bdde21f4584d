"""One interface for every way of turning noisy frames into estimates: the identity, each tuned classical filter,
each trained network, an external restorer. ``test``, the study and ``denoise`` all run a :class:`Method`.

Dependency-free (numpy only), so any layer may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

# pretrained: a network of the model zoo (emdenoise.zoo), trained before the run that scores it, not by it
Kind = Literal["input", "classical", "deep", "pretrained", "external"]
KINDS: tuple[Kind, ...] = ("input", "classical", "deep", "pretrained", "external")


@dataclass(frozen=True)
class Context:
    """What a method may know about the frames besides their values.

    ``pixel_size``: A/px (None: unknown). ``count_scale``: detected electrons per unit of the frames' values
    (None: not counts, or unknown). ``dose``: electrons per pixel of each frame, shape (B,) (None: unknown).
    """

    pixel_size: float | None = None
    count_scale: float | None = None
    dose: np.ndarray | None = None


@runtime_checkable
class Method(Protocol):
    """``method(frames, context) -> estimates``: frames (B, H, W) float32 in, estimates of the same shape out."""

    @property
    def name(self) -> str: ...  # the row's name

    @property
    def kind(self) -> Kind: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...  # what reproduces the row, as reported

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray: ...


@dataclass(frozen=True)
class Identity:
    """The noisy input itself: the row every other row must beat."""

    name: str = "noisy"
    kind: Kind = "input"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        return np.asarray(frames, dtype=np.float32)
