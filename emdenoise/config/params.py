"""The one parameters schema: a YAML file with one section per task, validated before any work starts.

Each section is a frozen dataclass below; each of its fields is one parameter declared with
:func:`~emdenoise.config.schema.param` (the machinery, with no dependencies, is :mod:`emdenoise.config.schema`):
a type, a default, a range or a set of choices, and a line of help. That table is the single source: the
validation, the typed objects every task receives and the README's parameters reference (``python -m
emdenoise params``) all come from it. Names that belong to a registry come from that registry: the models
(:mod:`emdenoise.models`, which also declares each model's own ``train:`` options), the classical baselines
(:mod:`emdenoise.classical.names`) and the named download sources (:mod:`emdenoise.data.acquire.sources`).

Unknown keys are errors with a did-you-mean hint; ``--set section.key=value`` overrides a value from the
command line; checks that involve two fields (``dose_min <= dose_max``, ``tile_overlap <= tile_size / 2``) are
the section's :meth:`~emdenoise.config.schema.Section.check`. Fixed choices come from the modules that implement
them (:mod:`emdenoise.training.choices`, :data:`emdenoise.runtime.PRECISIONS`).

    p = params.load("workspace/parameters/default.parameters.yaml", ["train.epochs=5"])
    p.train.epochs            # 5, an int
    p.train.model_options     # {"unet_base": 32, "dncnn_depth": 17, ...}: the models' own options
    p.train.where             # the file the values came from, for error messages
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from emdenoise.classical import names as classical_names
from emdenoise.config.schema import (
    Field,
    Names,
    Section,
    apply_overrides,
    hint,
    param,
    read_yaml,
    validate_sections,
    validate_value,
)
from emdenoise.config.schema import reference_markdown as _markdown
from emdenoise.inference.levels import FRAME_LEVELS
from emdenoise.runtime import PRECISIONS
from emdenoise.training.choices import (
    AUGMENTS,
    CLEAN_ONLY_CONDITIONS,
    CONDITION_CHANNELS,
    CONDITIONS,
    LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    SELECT_BY,
    SUPERVISIONS,
)

# The largest seed: NumPy's legacy seeding and many tools take 32-bit seeds, and torch.manual_seed fails on
# values of 2**64 and above (training derives per-epoch generator seeds from it, which must stay below 2**63).
MAX_SEED = 2**32 - 1


# -- the registries' names (imported when first needed: the registries import NumPy, SciPy, ...) ---------------
def _model_names() -> tuple[str, ...]:
    from emdenoise import models

    return models.names()


def _models_or_none() -> tuple[str, ...]:
    return _model_names() + ("none",)


def _baselines_or_none() -> tuple[str, ...]:
    return classical_names.ALL + ("none",)


def _zoo_or_none() -> tuple[str, ...]:
    from emdenoise import zoo

    return (*zoo.models(), "none")


def _peers_or_none() -> tuple[str, ...]:
    from emdenoise.inference import peer

    return (*peer.NAMES, "none")


def _materials() -> tuple[str, ...]:
    from emdenoise.data.simulate.scenes import material_choices

    return material_choices()


def _optics_regimes() -> tuple[str, ...]:
    from emdenoise.data.simulate.physics import REGIMES

    return REGIMES


def _imaging_modes() -> tuple[str, ...]:
    from emdenoise.data.simulate.stem import IMAGING

    return IMAGING


def _stem_units() -> tuple[str, ...]:
    from emdenoise.data.simulate.stem import UNITS

    return UNITS


def _source_check(value: str) -> str | None:
    from emdenoise.data.acquire.sources import NAMED_SOURCES

    if value in NAMED_SOURCES or value.startswith(
        ("http://", "https://", "s3://", "file://", "/", "./", "../", "~", "micrographs:")
    ):
        return None
    if Path(value).suffix == ".zip" or "/" in value:
        return None
    return (
        f"one of {', '.join(NAMED_SOURCES)}{hint(value.lower(), NAMED_SOURCES)}, an http(s):// or s3:// "
        f"URL, a local folder or .zip, or micrographs:PATH"
    )


def _device_check(value: str) -> str | None:
    """The one rule for every ``device`` key."""
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "auto, cpu, cuda or cuda:N"


def _tile_check(value: int) -> str | None:
    return None if value == 0 or value >= 16 else "0 or an integer >= 16"


PRECISION_CHOICES = ("auto",) + PRECISIONS
FALLBACK_TILE = 256  # denoise: the tiles of frames too large to go through whole (emdenoise.inference.tiling)


def memory_limit_param() -> Any:
    """``memory_limit_gb``, the same field in every section whose task reads files (download, preprocess, denoise)."""
    return param(
        "float",
        0.0,
        "memory budget in GB for what a file's header may make a reader allocate at once (a frame, a chunk, a "
        "whole image); larger claims are refused in one line (0: the environment variable "
        "EMDENOISE_MEMORY_LIMIT_GB, else half the memory available)",
        min=0.0,
        max=1e6,
    )


# -- the sections --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadParams(Section):
    NAME: ClassVar[str] = "download"
    source: str = param(
        "str",
        "synthetic",
        "where the data come from: synthetic, abtem (multislice, pip install 'emdenoise[abtem]'), stfc, osn, "
        "minibatch, an http(s):// or s3:// URL, a local folder or .zip in the em_graphene_sim layout, or "
        "micrographs:PATH (a folder or .zip of your own noisy micrographs in any format denoise reads)",
        check=_source_check,
    )
    seed: int = param("int", 0, "synthetic: random seed (same seed, same bytes)", min=0, max=MAX_SEED)
    train_images: int = param("int", 512, "synthetic: number of training pairs", min=1, max=1_000_000)
    test_images: int = param("int", 128, "synthetic: number of test pairs", min=1, max=1_000_000)
    image_size: int = param("int", 256, "synthetic: image side in pixels", min=32, max=4096)
    dose_min: float = param(
        "float", 5.0, "synthetic: lowest dose, electrons per pixel at the beam centre", min=0.01, max=1e6
    )
    dose_max: float = param(
        "float", 100.0, "synthetic: highest dose, electrons per pixel at the beam centre", min=0.01, max=1e6
    )
    dead_pixel_fraction: float = param("float", 0.001, "synthetic: fraction of dead (zero) pixels", min=0.0, max=0.5)
    material: str = param(
        "str",
        "graphene",
        "synthetic: the specimen: graphene, mos2, srtio3, or mixed (one of the three per image, drawn uniformly, "
        "recorded per image as material_code); see docs/guides/generator.md",
        choices=_materials,
    )
    optics: str = param(
        "str",
        "mixed",
        "synthetic: microscope: corrected (60-80 kV), uncorrected (200-300 kV) or mixed (3 in 4 corrected)",
        choices=_optics_regimes,
    )
    pixel_size_min: float = param("float", 0.12, "synthetic: smallest pixel size, A/px", min=0.02, max=5.0)
    pixel_size_max: float = param("float", 0.3, "synthetic: largest pixel size, A/px (log-uniform)", min=0.02, max=5.0)
    generalisation_count: int = param(
        "int", 0, "synthetic: pairs of an extra generalisation/ split (0: none)", min=0, max=1_000_000
    )
    generalisation_material: str = param(
        "str", "mos2", "synthetic: the specimen of the generalisation/ split", choices=_materials
    )
    generalisation_optics: str = param(
        "str", "mixed", "synthetic: the microscope of the generalisation/ split", choices=_optics_regimes
    )
    imaging: str = param(
        "str",
        "hrtem",
        "synthetic: hrtem (phase contrast), haadf (STEM Z-contrast), abf (STEM annular bright field, an "
        "approximation) or mixed (one of the three per image; needs stem_units: electrons); see "
        "docs/guides/generator.md",
        choices=_imaging_modes,
    )
    stem_units: str = param(
        "str",
        "detector",
        "synthetic STEM: the stored values: detector (detector units, offset + gain x counts + read noise) or "
        "electrons ((reading - offset) / (gain x dose), HRTEM's units) or mean ((reading - offset) / (gain x the "
        "image's mean expected counts): mean 1, the level of the zoo's STEM models; dose then that mean); clean is "
        "the noise-free expectation in the same units",
        choices=_stem_units,
    )
    stem_dose_min: float = param(
        "float",
        1e4,
        "synthetic STEM: lowest dose, electrons per probe position (download.dose_* are HRTEM's)",
        min=0.01,
        max=1e9,
    )
    stem_dose_max: float = param(
        "float", 1e5, "synthetic STEM: highest dose, electrons per probe position (log-uniform)", min=0.01, max=1e9
    )
    stem_jitter_px: float = param(
        "float",
        0.3,
        "synthetic STEM: largest RMS of the per-scan-line x jitter, px (each image: uniform in [0, this])",
        min=0.0,
        max=10.0,
    )
    stem_drift_px: float = param(
        "float",
        2.0,
        "synthetic STEM: largest specimen drift over a frame, px (each image: uniform length, any direction)",
        min=0.0,
        max=64.0,
    )
    stem_flyback_px: float = param(
        "float",
        1.0,
        "synthetic STEM: largest flyback lag at the start of each line, px (decays over 5 % of the line)",
        min=0.0,
        max=64.0,
    )
    stem_detector_offset: float = param(
        "float", 33000.0, "synthetic STEM: detector reading with no electrons, detector units", min=0.0, max=60000.0
    )
    stem_detector_gain: float = param(
        "float", 4.0, "synthetic STEM: detector units per detected electron", min=0.01, max=1000.0
    )
    stem_read_noise: float = param(
        "float", 3.0, "synthetic STEM: Gaussian read noise of the detector, detector units (sigma)", min=0.0, max=1000.0
    )
    structure: str = param(
        "str",
        "none",
        "abtem: a structure file ASE reads (CIF, extxyz, POSCAR ...), seen along z and repeated over the field, "
        "instead of the scenes of download.material (none: the scenes)",
    )
    abtem_oversampling: int = param(
        "int",
        2,
        "abtem: abTEM's grid is this many times finer than the image (1: 10-15x faster, less exact)",
        min=1,
        max=4,
    )
    workers: int = param(
        "int", 0, "synthetic: worker processes (0: one per core); never changes the output", min=0, max=256
    )
    endpoint: str = param("str", "https://s3.echo.stfc.ac.uk", "S3 endpoint used for s3://bucket/prefix sources")
    page_size: int = param("int", 1000, "objects per S3 ListObjectsV2 page", min=1, max=1000)
    retries: int = param("int", 5, "attempts per request on timeouts and 5xx answers", min=1, max=100)
    timeout: float = param(
        "float",
        60.0,
        "seconds of silence from a server before retrying (connecting: at most 10 s)",
        min=0.1,
        max=86_400.0,
    )
    max_archive_bytes: int = param("int", 64 * 2**30, "largest total uncompressed size accepted from a zip", min=1)
    memory_limit_gb: float = memory_limit_param()

    def check(self) -> None:
        ranges = (("dose_min", "dose_max"), ("pixel_size_min", "pixel_size_max"), ("stem_dose_min", "stem_dose_max"))
        for low, high in ranges:
            if getattr(self, low) > getattr(self, high):
                raise self.error(low, f"expected <= download.{high} ({getattr(self, high)}), got {getattr(self, low)}")
        if self.structure != "none" and self.source != "abtem":
            raise self.error(
                "structure",
                f"expected none unless download.source is abtem (it is {self.source!r}), got {self.structure!r}",
            )
        if self.imaging == "mixed" and self.stem_units == "detector":
            raise self.error(
                "stem_units",
                "expected electrons or mean when download.imaging is mixed (HRTEM images are in electrons per incident "
                "electron; detector units would put two scales into one split), got 'detector'",
            )
        if self.imaging != "hrtem" and self.source == "abtem":
            raise self.error("imaging", f"expected hrtem when download.source is abtem, got {self.imaging!r}")


@dataclass(frozen=True)
class PreprocessParams(Section):
    NAME: ClassVar[str] = "preprocess"
    val_fraction: float = param(
        "float",
        0.1,
        "fraction of the training pairs held out for validation (rounded; "
        "at least one pair, at least one left for training)",
        min=0.0,
        max=0.9,
    )
    seed: int = param("int", 0, "random seed of the train/val split", min=0, max=MAX_SEED)
    tile_size: int = param(
        "int", 128, "micrographs: side of the square tiles the frames are cut into", min=16, max=4096
    )
    memory_limit_gb: float = memory_limit_param()
    align: str = param(
        "str",
        "auto",
        "micrographs: drift alignment of the frames of a stack: auto (aligned; frames with too little signal to "
        "measure the drift stay as recorded, with a warning), on (an unmeasurable drift is an error), off",
        choices=("auto", "on", "off"),
    )


@dataclass(frozen=True)
class TrainParams(Section):
    """The ``train:`` section. Besides the fields below it holds the options every model declares for itself
    (``unet_base``, ``dncnn_depth``, ...: :func:`emdenoise.models.option_fields`), in ``model_options``."""

    NAME: ClassVar[str] = "train"
    model: Names = param("names", "sciml_ae", "model(s) to train: a name, a list, or all", choices=_model_names)
    epochs: int = param("int", 2, "passes over the training split", min=1, max=100_000)
    batch_size: int = param("int", 16, "images per optimiser step (global, across processes)", min=1, max=65_536)
    lr: float = param("float", 1e-3, "learning rate", min=0.0, max=10.0)
    optimizer: str = param("str", "adam", "optimiser", choices=OPTIMIZERS)
    lr_schedule: str = param("str", "cosine", "learning-rate schedule over the whole run", choices=LR_SCHEDULES)
    loss: str = param("str", "mse", "training loss on normalised images", choices=LOSSES)
    warmup_steps: int = param(
        "int",
        0,
        "linear learning-rate warm-up over the first N optimiser steps, then the schedule (0: none)",
        min=0,
        max=10_000_000,
    )
    ema: float = param(
        "float",
        0.0,
        "exponential moving average of the weights, this decay per optimiser step (e.g. 0.999; 0: off): validation "
        "and the model files use the averaged weights",
        min=0.0,
        max=0.99999,
    )
    select_by: str = param(
        "str",
        "psnr",
        "the val measure that picks the best epoch (the model file): psnr, or band_psnr (the lattice band, blind "
        "to the brightness level that dominates PSNR); noisy-only val data: the val loss",
        choices=SELECT_BY,
    )
    augment: str = param(
        "str",
        "none",
        "training crops: none, or dihedral (each crop turned by a random multiple of 90 degrees and flipped at "
        "random; rotations only for square crops; not for STEM scans, whose scan direction is not symmetric)",
        choices=AUGMENTS,
    )
    seed: int = param("int", 0, "random seed (initialisation, shuffling, crops)", min=0, max=MAX_SEED)
    device: str = param("str", "auto", "auto (cuda if present, else cpu), cpu, cuda or cuda:N", check=_device_check)
    precision: str = param(
        "str", "auto", "auto (bf16 autocast where it helps), fp32, bf16 or fp16", choices=PRECISION_CHOICES
    )
    num_workers: int = param(
        "int", 0, "data-loader worker processes (data are in memory: 0 is usually best)", min=0, max=64
    )
    max_train_images: int = param("int", 0, "use only the first N training pairs (0: all)", min=0)
    patch_size: int = param("int", 0, "train on random square crops of this side (0: whole images)", min=0, max=4096)
    resume: str = param(
        "str",
        "auto",
        "auto: continue from the last checkpoint of the same configuration; never: start afresh",
        choices=("auto", "never"),
    )
    compile: bool = param(
        "bool",
        False,
        "torch.compile the model for training (opt-in; when compiling fails: a one-line warning and eager training)",
    )
    supervision: str = param(
        "str",
        "clean",
        "training targets: clean (pairs with clean images), noise2void (blind spots on single noisy frames), "
        "poisson_split (each counted frame thinned into two independent halves), frame_pairs (consecutive "
        "frames of a stack, drift aligned by preprocess)",
        choices=SUPERVISIONS,
    )
    blind_spot_fraction: float = param(
        "float", 0.02, "noise2void: fraction of pixels masked (on a random pattern) per image", min=0.0001, max=0.5
    )
    counts_per_unit: float = param(
        "float",
        0.0,
        "poisson_split: electron counts per unit of the stored values (0: from the data: the recorded dose, "
        "else the dataset card's count_scale, else 1 for whole-number data)",
        min=0.0,
        max=1e9,
    )
    init_from: str = param(
        "str",
        "none",
        "a model file or zoo:NAME (emdenoise zoo) to start from and fine-tune (same architecture; its architecture "
        "options replace the section's; none: random start)",
    )
    condition: str = param(
        "str",
        "none",
        "what the model sees of the noisy frame: none, flatfield (divided by its own smooth beam estimate; clean "
        "supervision only), anscombe (variance-stabilised counts), noise_level (plus the local Poisson noise "
        "level), flatfield+noise_level, wiener_prior (plus a spectral Wiener estimate of the frame as a second "
        "channel: unet only); recorded in the model file, applied again at inference",
        choices=CONDITIONS,
    )
    model_options: dict[str, Any] = dataclasses.field(default_factory=lambda: model_option_defaults())

    @classmethod
    def fields(cls) -> dict[str, Field]:
        from emdenoise import models

        return {**super().fields(), **models.option_fields()}

    @classmethod
    def build(cls, values: dict[str, Any], where: str) -> Section:
        from emdenoise import models

        options = {key: values.pop(key) for key in models.option_fields()}
        section = cls(where=where, model_options=options, **values)
        section.check()
        return section

    def as_dict(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in super().fields()}, **self.model_options}

    def check(self) -> None:
        if self.condition in CLEAN_ONLY_CONDITIONS and self.supervision != "clean":
            raise self.error(
                "condition",
                f"expected none, anscombe or noise_level with supervision {self.supervision} (a flat-fielded input "
                "or estimate cannot give back the beam its noisy targets keep), got " + self.condition,
            )
        from emdenoise import models

        if CONDITION_CHANNELS.get(self.condition, 1) > 1:
            single = [name for name in self.model_names() if name not in models.multichannel()]
            if single:
                raise self.error(
                    "condition",
                    f"expected a model that takes a second input channel ({', '.join(models.multichannel())}) with "
                    f"{self.condition}, got {', '.join(single)}",
                )

    def model_names(self) -> list[str]:
        """The models to train, ``all`` resolved to every registered model."""
        return list(_model_names()) if self.model == "all" else list(self.model)


def model_option_defaults() -> dict[str, Any]:
    from emdenoise import models

    return {key: validate_value("defaults", key, fld, fld.default) for key, fld in models.option_fields().items()}


@dataclass(frozen=True)
class TestParams(Section):
    __test__: ClassVar[bool] = False  # not a pytest test class
    NAME: ClassVar[str] = "test"
    models: Names = param(
        "names",
        "all",
        "models to evaluate (all: every model found in model_dir; none: baselines only)",
        choices=_models_or_none,
    )
    baselines: Names = param(
        "names",
        list(classical_names.DEFAULT),
        "classical baselines, tuned on the val split (all: every one installed; none: models "
        "only; bm3d and anscombe_bm3d need the optional non-commercial bm3d package)",
        choices=_baselines_or_none,
    )
    zoo: Names = param(
        "names",
        "none",
        "pretrained models of the model zoo (emdenoise zoo) scored as rows of their own, kind pretrained: trained "
        "before this run, not by it (all: every one installed; none: no zoo rows)",
        choices=_zoo_or_none,
    )
    peers: Names = param(
        "names",
        "none",
        "the peer restorer's pretrained networks (tk_r_em_NETWORK: tk_r_em's sfr_hrtem, sfr_lrtem, ...) scored as "
        "rows of kind external, beam flat-fielded, gain/offset tuned on the val split (all: every one installed; "
        "none: no peer rows); needs the optional GPL-3 extra: pip install 'emdenoise[peer]'",
        choices=_peers_or_none,
    )
    batch_size: int = param("int", 16, "images per inference batch", min=1, max=65_536)
    device: str = param("str", "auto", "auto, cpu, cuda or cuda:N", check=_device_check)
    precision: str = param("str", "auto", "auto, fp32, bf16 or fp16", choices=PRECISION_CHOICES)
    max_test_images: int = param("int", 0, "evaluate only the first N test pairs (0: all)", min=0)
    tune_images: int = param("int", 16, "validation pairs used to tune the baselines' parameters", min=1)
    figure_images: int = param("int", 4, "test images shown in the comparison figure", min=0, max=32)
    band_min_angstrom: float = param(
        "float", 1.0, "lattice band of the band-limited PSNR: shortest d-spacing kept, A", min=0.01, max=1000.0
    )
    band_max_angstrom: float = param(
        "float", 3.5, "lattice band of the band-limited PSNR: longest d-spacing kept, A", min=0.01, max=1000.0
    )
    atom_tolerance_angstrom: float = param(
        "float", 0.5, "atom-column detection: a peak this close to a true column matches it, A", min=0.001, max=100.0
    )
    max_deviation: float = param(
        "float",
        0.07,
        "consistency check: flag an output whose Poisson deviance implies a relative error above this (the "
        "structure and lattice tests flag besides)",
        min=0.0,
        max=10.0,
    )

    def check(self) -> None:
        if self.band_min_angstrom >= self.band_max_angstrom:
            raise self.error(
                "band_min_angstrom",
                f"expected < test.band_max_angstrom ({self.band_max_angstrom}), got {self.band_min_angstrom}",
            )


@dataclass(frozen=True)
class DenoiseParams(Section):
    NAME: ClassVar[str] = "denoise"
    model: str = param(
        "str",
        "auto",
        "model to apply: a folder name in model_dir, auto (the only model there; an error lists the choices "
        "when there are several), zoo:NAME (a pretrained model: emdenoise zoo), a model file, a model's folder or "
        "a folder of models",
    )
    method: str = param(
        "str",
        "model",
        "model (the trained model denoise.model names), zoo:NAME, or a classical filter by name (gaussian, "
        "median, tv, nlm, flat_gaussian, bragg, wiener, pnlm; bm3d ones with the extra), default settings, or the "
        "peer restorer tk_r_em_NETWORK (e.g. tk_r_em_sfr_hrtem; pip install 'emdenoise[peer]')",
    )
    tile_size: int = param(
        "int",
        0,
        "side of the square tiles a frame is cut into (0: whole frames where the model's activations fit "
        "denoise.memory_mb, tiles of 256 beyond; multiples of 8 keep the models' pooling grid aligned)",
        min=0,
        max=65_536,
        check=_tile_check,
    )
    memory_mb: int = param(
        "int",
        2048,
        "memory a model call may use with tile_size 0 (estimated from the model's widest layer): frames that fit go "
        "through whole, several at a time; larger frames are tiled",
        min=16,
        max=1_048_576,
    )
    tile_overlap: int = param(
        "int", 32, "pixels shared by neighbouring tiles, cross-faded (at most tile_size / 2)", min=0, max=32_768
    )
    batch_size: int = param(
        "int", 8, "tiles per inference batch (tiles of consecutive frames are batched together)", min=1, max=65_536
    )
    device: str = param("str", "auto", "auto, cpu, cuda or cuda:N", check=_device_check)
    precision: str = param("str", "auto", "auto, fp32, bf16 or fp16", choices=PRECISION_CHOICES)
    pattern: str = param(
        "str", "*", "glob selecting the input files in input_dir (e.g. *.tif, or **/* to include subfolders)"
    )
    pixel_size: float = param(
        "float",
        0.0,
        "pixel size of the input frames in A/px, overriding the files' calibration (0: read each file's "
        "calibration: TIFF resolution, ImageJ/OME, MRC voxel size, DM/EMD/SER axes, HDF5 pixel_size attribute)",
        min=0.0,
        max=1e6,
    )
    rescale: str = param(
        "str",
        "auto",
        "auto: resample frames whose pixel size differs from the model's by more than scale_tolerance to the "
        "model's sampling, denoise, resample back to the input grid; never: refuse such files in one line",
        choices=("auto", "never"),
    )
    scale_tolerance: float = param(
        "float",
        0.05,
        "relative difference between the input's and the model's pixel sizes within which frames are denoised "
        "as they are",
        min=0.0,
        max=1.0,
    )
    frame_level: str = param(
        "str",
        "auto",
        "auto: a model trained on frames of counts / dose (its file's input_units; the zoo's) sees each frame at "
        "that level (the counts above any detector offset over their beam-centre level) and its output comes back "
        "in the frame's units; as_is: frames go in as they are (files already in counts / dose)",
        choices=FRAME_LEVELS,
    )
    suffix: str = param(
        "str",
        "none",
        "appended to each output's name before its extension (none: the input's own name, in output_dir; the "
        "command line sets _denoised when no output is given and the outputs go beside the inputs)",
    )
    max_deviation: float = param(
        "float",
        0.07,
        "consistency check: warn when an output's Poisson deviance against its input implies a relative error "
        "above this, or its structure or lattice test fires (the model may be inventing or erasing structure; 0: "
        "no check)",
        min=0.0,
        max=10.0,
    )
    score: str = param(
        "str",
        "off",
        "scores without clean truth of the method, the noisy input, gaussian and wiener for each input "
        "(its first image): movie (interleaved frame halves, registered), split (binomial split of each frame's "
        "counts), auto (movie for 2 frames or more), off; written beside each output as <output>.scores.json, "
        ".scores.md and .local_maps.png",
        choices=("off", "auto", "movie", "split"),
    )
    memory_limit_gb: float = memory_limit_param()

    def check(self) -> None:
        tile = self.tile_size or FALLBACK_TILE  # tile_size 0 still tiles frames too large for memory_mb
        if self.tile_overlap > tile // 2:
            raise self.error("tile_overlap", f"expected at most tile_size / 2 ({tile // 2}), got {self.tile_overlap}")


@dataclass(frozen=True)
class StudyParams(Section):
    NAME: ClassVar[str] = "study"
    models: Names = param("names", "all", "models in the study: a name, a list, or all", choices=_model_names)
    train_sizes: list[int] = param(
        "ints",
        [125, 250, 500, 1000, 2000, 4000, 7200],
        "numbers of training pairs each model is trained on (the first N of the train split; at most its size)",
        min=1,
    )
    epochs: int = param("int", 20, "passes over its training pairs for every cell", min=1, max=100_000)
    min_steps: int = param(
        "int",
        0,
        "train every cell for at least this many optimiser steps (more epochs for "
        "the small sizes, so they are not judged on a handful of updates; 0: epochs only)",
        min=0,
        max=10_000_000,
    )
    batch_size: int = param("int", 16, "images per optimiser step, and per inference batch", min=1, max=65_536)
    lr: float = param("float", 1e-3, "learning rate", min=0.0, max=10.0)
    patch_size: int = param("int", 0, "train on random square crops of this side (0: whole images)", min=0, max=4096)
    device: str = param("str", "auto", "auto (cuda if present, else cpu), cpu, cuda or cuda:N", check=_device_check)
    seed: int = param("int", 0, "random seed of every cell's training", min=0, max=MAX_SEED)
    baselines: Names = param(
        "names",
        list(classical_names.DEFAULT),
        "classical baselines, tuned on the val split once (all: every one installed; none: no baseline)",
        choices=_baselines_or_none,
    )
    peers: Names = param(
        "names",
        "none",
        "the peer restorer's networks (tk_r_em_NETWORK, as test.peers) scored once beside the baselines, gain/offset "
        "tuned on the val split (all: every one installed; none: no peer rows); pip install 'emdenoise[peer]'",
        choices=_peers_or_none,
    )
    max_test_images: int = param("int", 0, "evaluate on the first N test pairs only (0: all)", min=0)
    dose_bins: int = param(
        "int", 4, "dose bins of about equal size for PSNR vs dose (when the data have dose)", min=1, max=100
    )

    def model_names(self) -> list[str]:
        """The models of the study, ``all`` resolved to every registered model."""
        return list(_model_names()) if self.models == "all" else list(self.models)


SECTIONS: dict[str, type[Section]] = {
    cls.NAME: cls for cls in (DownloadParams, PreprocessParams, TrainParams, TestParams, DenoiseParams, StudyParams)
}


@dataclass(frozen=True)
class Params:
    """Every section, validated. ``where``: the parameters file (or ``parameters`` for the defaults)."""

    download: DownloadParams
    preprocess: PreprocessParams
    train: TrainParams
    test: TestParams
    denoise: DenoiseParams
    study: StudyParams
    where: str = dataclasses.field(default="parameters", compare=False)

    def section(self, name: str) -> Section:
        section: Section = getattr(self, name)
        return section

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: self.section(name).as_dict() for name in SECTIONS}


def schema() -> dict[str, dict[str, Field]]:
    """``{section: {key: Field}}``: the whole table (the models' options included)."""
    return {name: cls.fields() for name, cls in SECTIONS.items()}


def defaults() -> Params:
    """Every parameter at its default."""
    return validate({})


def validate(raw: Any, where: str = "parameters") -> Params:
    """Merge ``raw`` (a parsed YAML mapping) over the defaults, check every value, build the typed sections."""
    built = validate_sections(SECTIONS, raw, where)
    return Params(where=where, **built)  # type: ignore[arg-type]


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read, merge and validate a parameters file (``None``: defaults only) plus ``section.key=value`` overrides."""
    raw = {} if path is None else read_yaml(Path(path), ", ".join(SECTIONS))
    return validate(apply_overrides(SECTIONS, raw, overrides), "parameters" if path is None else str(path))


def reference_markdown() -> str:
    """The parameters reference table for the README."""
    return _markdown(schema())
