"""The model registry: one file per model, one row per model in :data:`CATALOGUE`.

    from emdenoise import models
    net = models.build("unet", base=32)          # options as the model's constructor names them
    models.names()                               # ('cafcn', 'dncnn', ...)
    models.get("unet").documented_params         # the count the docstring states, for the tests

Every model maps a (B, 1, H, W) float tensor to a (B, 1, H, W) tensor for any H and W, working on
normalised images (the train task normalises inputs and targets, see the dataset card). A model whose
layers need H and W to be multiples of some k (pooling, pixel-unshuffle) pads its input to them and crops
the output back, and says so in a class attribute ``size_multiple = k`` (1 when absent), which the export
(:mod:`emdenoise.inference.export`) uses to do that padding itself, outside the traced network.

The catalogue names each model's file and class, the parameter count its docstring states, and its own
``train:`` options (``{"base": ("unet_base", Field(...))}``: constructor option -> parameter key and its
schema field). It imports neither torch nor the model files (a model file is imported when its model is
built), so the parameters schema reads the names and options without torch: :func:`option_fields` hands them
to the schema and :func:`options_from_train` picks a model's options from a validated ``train:`` section.
:mod:`emdenoise.models.conditioning` (``train.condition``) wraps any of them to see a conditioned input.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from emdenoise.config.schema import Field

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str  # also the name of its file in this package
    class_name: str
    documented_params: int  # parameter count with default options, as stated in the module docstring
    # a constructor option -> (the train: parameter that sets it, its schema field), e.g.
    # {"base": ("unet_base", Field("int", 32, "unet: channels of the first level", min=1, max=256))}
    options: dict[str, tuple[str, Field]] = field(default_factory=dict)
    # the constructor takes in_channels (a conditioning that adds input channels needs it)
    multichannel: bool = False

    @property
    def factory(self) -> Callable[..., nn.Module]:
        """The model's class (its file imported now)."""
        factory: Callable[..., nn.Module] = getattr(
            importlib.import_module(f"emdenoise.models.{self.name}"), self.class_name
        )
        return factory


def _even(value: int) -> str | None:
    return None if value % 2 == 0 else "an even number"


_ROWS = (
    ModelSpec("cafcn", "CAFCN", 655_544),
    ModelSpec(
        "dncnn",
        "DnCNN",
        556_097,
        {
            "depth": (
                "dncnn_depth",
                Field("int", 17, "dncnn: number of conv layers (17 known noise, 20 blind)", min=3, max=100),
            )
        },
    ),
    ModelSpec("ffdnet", "FFDNet", 486_148),
    ModelSpec(
        "unet",
        "UNet",
        7_759_521,
        {
            "base": (
                "unet_base",
                Field(
                    "int", 32, "unet: channels of the first level (32 practical, 64 as in the paper)", min=1, max=256
                ),
            )
        },
        multichannel=True,
    ),
    ModelSpec(
        "rednet",
        "REDNet",
        1_035_201,
        {
            "depth": (
                "rednet_depth",
                Field("int", 30, "rednet: total conv + deconv layers (even; 30 is RED30)", min=2, max=100, check=_even),
            )
        },
    ),
    ModelSpec("mscnn", "MSCNN", 335_585),
    ModelSpec(
        "msdnet",
        "MSDNet",
        45_652,
        {
            "depth": ("msdnet_depth", Field("int", 100, "msdnet: number of layers", min=1, max=1000)),
            "width": ("msdnet_width", Field("int", 1, "msdnet: feature maps per layer", min=1, max=64)),
        },
    ),
    ModelSpec("sciml_ae", "SciMLAutoencoder", 122_737),
)
CATALOGUE: dict[str, ModelSpec] = {spec.name: spec for spec in _ROWS}


class _TrainSection(Protocol):
    """What :func:`options_from_train` needs of a ``train:`` section (:class:`emdenoise.config.params.TrainParams`)."""

    @property
    def model_options(self) -> Mapping[str, Any]: ...


def names() -> tuple[str, ...]:
    return tuple(CATALOGUE)


def get(name: str) -> ModelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}") from None


def option_fields() -> dict[str, Field]:
    """Every model's own ``train:`` parameters, ``{key: Field}``, in registry order."""
    return {key: fld for spec in CATALOGUE.values() for key, fld in spec.options.values()}


def options_from_train(name: str, train: _TrainSection) -> dict[str, Any]:
    """The constructor options of model ``name`` taken from a validated ``train:`` section."""
    return {opt: train.model_options[key] for opt, (key, _) in get(name).options.items()}


def build(name: str, in_channels: int = 1, **options) -> nn.Module:
    """Model ``name`` with its constructor ``options``; ``in_channels`` other than 1 only for a multichannel one."""
    spec = get(name)
    if in_channels == 1:
        return spec.factory(**options)
    if not spec.multichannel:
        raise ValueError(f"{name} takes one input channel; {in_channels} need one of {', '.join(multichannel())}")
    return spec.factory(in_channels=in_channels, **options)


def multichannel() -> tuple[str, ...]:
    """The models whose constructor takes ``in_channels``."""
    return tuple(spec.name for spec in CATALOGUE.values() if spec.multichannel)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
