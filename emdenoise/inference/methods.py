"""From what a user names to a :class:`emdenoise.method.Method`: the ``denoise`` task and the Python API.

- A trained model (:func:`find_model`): ``auto`` (the only model in ``model_dir``), a name in ``model_dir``,
  ``zoo:NAME`` (a pretrained model, :mod:`emdenoise.zoo`), a model file, a model's folder
  (``<name>/em_denoise_model.h5``) or a folder of models (the only one there).
- A classical filter by name (:func:`classical_method`): one of :mod:`emdenoise.classical.methods`, with its
  default settings for the frames' pixel size and count scale (no clean data to tune on).
- The peer restorer by row name (``tk_r_em_NETWORK``, :mod:`emdenoise.inference.peer`, the optional ``peer``
  extra): tk_r_em's pretrained network on the flat-fielded frames, no gain/offset.
"""

from __future__ import annotations

from pathlib import Path

from emdenoise import zoo
from emdenoise.errors import InputError
from emdenoise.inference import peer
from emdenoise.layout import MODEL_FILE, select_model
from emdenoise.method import Context, Method

MODEL = "model"  # denoise.method's value for "the trained model denoise.model names"


def classical_names() -> tuple[str, ...]:
    from emdenoise.classical import names

    return names.ALL


def classical_method(name: str, context: Context, field: str = "denoise.method") -> Method:
    """The classical filter ``name`` with its default settings for frames described by ``context`` (pixel size,
    count scale): :func:`emdenoise.classical.methods.build`, its errors as one-line InputErrors naming ``field``."""
    from emdenoise.classical import methods as classical

    if is_peer(name):
        return peer_method(name, field)
    if name not in classical.names():
        raise InputError.at(
            "parameters",
            field,
            f"expected {MODEL}, zoo:NAME or a filter ({', '.join(classical.names())}), got {name!r}",
        )
    try:
        return classical.build(name, context)
    except ImportError as exc:
        raise InputError.at("parameters", field, str(exc)) from None


def is_peer(method: str) -> bool:
    """Whether ``method`` names the peer restorer (``tk_r_em_NETWORK``)."""
    return method.startswith(peer.PREFIX)


def peer_method(name: str, field: str = "denoise.method") -> Method:
    """The peer restorer's network ``name`` (no gain/offset); unknown names and a missing extra are one-line
    InputErrors naming ``field``."""
    try:
        return peer.build(name)
    except KeyError as exc:
        raise InputError.at("parameters", field, str(exc.args[0])) from None
    except peer.PeerMissing as exc:
        raise InputError.at("parameters", field, str(exc)) from None


def find_model(spec: str, model_dir: Path | None, field: str = "denoise.model") -> tuple[str, Path]:
    """``(name, model file)`` for ``spec`` (see the module docstring); ``model_dir`` serves ``auto`` and names."""
    if spec.startswith(zoo.PREFIX):
        found = zoo.get(spec, field)
        return f"{zoo.PREFIX}{found.name}", found.model_file
    path = Path(spec).expanduser()
    plain_name = len(path.parts) == 1 and path.suffix != ".h5"
    by_name = spec == "auto" or (plain_name and model_dir is not None and (model_dir / spec / MODEL_FILE).is_file())
    looks_like_path = not plain_name or path.exists()
    if by_name or not looks_like_path:
        if model_dir is None or (spec == "auto" and not model_dir.is_dir()):
            raise InputError.at(
                model_dir or spec,
                "model_dir" if model_dir else field,
                "expected a folder of trained models, not found; run the train task, or give --model (a model "
                "file, its folder, zoo:NAME: see emdenoise zoo) or --method with a classical filter (e.g. wiener)",
            )
        return select_model(model_dir, spec, field)
    if path.is_file():
        return path.parent.name, path
    if (path / MODEL_FILE).is_file():
        return path.name, path / MODEL_FILE
    if path.is_dir():
        return select_model(path, "auto", field)
    raise InputError.at(path, field, "expected a model file, a model's folder or a folder of models, not found")


def is_model(method: str) -> bool:
    """Whether ``method`` (denoise.method) names a trained model rather than a classical filter."""
    return method == MODEL or method.startswith(zoo.PREFIX)
