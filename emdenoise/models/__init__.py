"""The model registry: one file per model, each registering itself by name.

    from emdenoise import models
    net = models.build("unet", base=32)          # options as the model's constructor names them
    models.names()                               # ('cafcn', 'dncnn', ...)
    models.get("unet").documented_params         # the count the docstring states, for the tests

Every model maps a (B, 1, H, W) float tensor to a (B, 1, H, W) tensor for any H and W, working on
normalised images (the train task normalises inputs and targets, see the dataset card).
``options_from_train(name, train_section)`` picks a model's options from the ``train:`` parameters.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

MODULES = ("cafcn", "dncnn", "ffdnet", "unet", "rednet", "mscnn", "msdnet", "sciml_ae")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    documented_params: int  # parameter count with default options, as stated in the module docstring
    # maps a constructor option to the train: parameter that sets it, e.g. {"base": "unet_base"}
    train_options: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, documented_params: int, train_options: dict[str, str] | None = None):
    """Class decorator: ``@register("unet", documented_params=7_760_000, train_options={"base": "unet_base"})``."""
    def deco(cls):
        _REGISTRY[name] = ModelSpec(name, cls, documented_params, dict(train_options or {}))
        return cls
    return deco


def _load_all() -> None:
    for module in MODULES:
        importlib.import_module(f"emdenoise.models.{module}")


def names() -> tuple[str, ...]:
    _load_all()
    return tuple(n for n in MODULES if n in _REGISTRY)


def get(name: str) -> ModelSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}") from None


def options_from_train(name: str, train: dict[str, Any]) -> dict[str, Any]:
    """The constructor options of model ``name`` taken from a validated ``train:`` section."""
    return {opt: train[key] for opt, key in get(name).train_options.items()}


def build(name: str, **options) -> nn.Module:
    return get(name).factory(**options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
