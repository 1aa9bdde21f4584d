"""The model registry: one file per model, each registering itself by name.

    from emdenoise import models
    net = models.build("unet", base=32)          # options as the model's constructor names them
    models.names()                               # ('cafcn', 'dncnn', ...)
    models.get("unet").documented_params         # the count the docstring states, for the tests

Every model maps a (B, 1, H, W) float tensor to a (B, 1, H, W) tensor for any H and W, working on
normalised images (the train task normalises inputs and targets, see the dataset card). A model whose
layers need H and W to be multiples of some k (pooling, pixel-unshuffle) pads its input to them and crops
the output back, and says so in a class attribute ``size_multiple = k`` (1 when absent), which the export
(:mod:`emdenoise.inference.export`) uses to do that padding itself, outside the traced network.
Each model declares its own ``train:`` options when it registers (``options={"base": ("unet_base",
Field(...))}``: constructor option -> parameter key and its schema field); :func:`option_fields` hands them
to the parameters schema and ``options_from_train(name, train)`` picks a model's options from a validated
``train:`` section.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from emdenoise.config.params import Field

if TYPE_CHECKING:
    from emdenoise.config.params import TrainParams

MODULES = ("cafcn", "dncnn", "ffdnet", "unet", "rednet", "mscnn", "msdnet", "sciml_ae")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    documented_params: int  # parameter count with default options, as stated in the module docstring
    # a constructor option -> (the train: parameter that sets it, its schema field), e.g.
    # {"base": ("unet_base", Field("int", 32, "unet: channels of the first level", min=1, max=256))}
    options: dict[str, tuple[str, Field]] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, documented_params: int, options: dict[str, tuple[str, Field]] | None = None):
    """Class decorator: ``@register("unet", documented_params=7_759_521, options={"base": ("unet_base",
    Field(...))})``."""

    def deco(cls):
        _REGISTRY[name] = ModelSpec(name, cls, documented_params, dict(options or {}))
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


def option_fields() -> dict[str, Field]:
    """Every model's own ``train:`` parameters, ``{key: Field}``, in registry order."""
    return {key: fld for name in names() for key, fld in get(name).options.values()}


def options_from_train(name: str, train: TrainParams) -> dict[str, Any]:
    """The constructor options of model ``name`` taken from a validated ``train:`` section."""
    return {opt: train.model_options[key] for opt, (key, _) in get(name).options.items()}


def build(name: str, **options) -> nn.Module:
    return get(name).factory(**options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
