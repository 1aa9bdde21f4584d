"""The classical baselines' names, dependency-free for the parameters schema: every registered one (the table
is :data:`emdenoise.classical.methods.BASELINES`, checked against this list when imported) and the default
list of ``test.baselines`` and ``study.baselines``: every one that needs no optional package."""

from __future__ import annotations

NEEDS_BM3D = ("bm3d", "anscombe_bm3d", "flat_anscombe_bm3d")  # the optional, non-commercial bm3d package
ALL: tuple[str, ...] = ("gaussian", "median", "tv", "nlm", "bm3d", "anscombe_bm3d", "flat_gaussian", "bragg")
ALL += ("wiener", "pnlm", "flat_anscombe_bm3d")
DEFAULT = tuple(name for name in ALL if name not in NEEDS_BM3D)
