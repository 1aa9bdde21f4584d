"""emdenoise: deep-learning denoising of electron-microscopy images, packaged as an MLCube.

One module per MLCube task lives in :mod:`emdenoise.tasks`; the command line is :mod:`emdenoise.cli`. The Python
API (:mod:`emdenoise.api`) is here, loaded on first use so that ``import emdenoise`` stays light (no torch)::

    import emdenoise
    result = emdenoise.denoise(emdenoise.load("movie.tif"), method="wiener")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"denoise": "emdenoise.api", "load": "emdenoise.api", "Denoised": "emdenoise.api", "Micrograph": "emdenoise.api"}
_API.update({"score": "emdenoise.api", "Scores": "emdenoise.api"})
_API["Denoiser"] = "emdenoise.inference.denoiser"
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'emdenoise' has no attribute {name!r}")
