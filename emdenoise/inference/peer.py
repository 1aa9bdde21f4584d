"""The peer restorer as a method row: tk_r_em's pretrained networks (Lobato, Friedrich, Van Aert, npj Comput.
Mater. 2024; the ``tk_r_em`` package, GPL-3, TensorFlow), kind ``external``: trained by others, on data of their
own, scored by ``test`` beside the classical filters and the zoo so that the tables say where emdenoise stands.

It is an optional extra (``pip install 'emdenoise[peer]'``): tk_r_em and TensorFlow are imported only inside
the functions here, and the networks come from the installed package's own ``models`` folder (TensorFlow
SavedModels, loaded with ``tf.saved_model.load``: nothing is downloaded at run time, and tk_r_em's own Keras 2
loader is not needed, so any TensorFlow 2 that loads a SavedModel serves).

What a frame goes through (:meth:`Peer.restore`):

1. Detector values on an offset (STEM, CCD) given without a count scale become counts by the frame's own
   offset model (:func:`emdenoise.classical.detector.offset_model`), as the beam-aware filters do.
2. The illumination is fitted and divided out with the beam-aware filters' own flat-field
   (:class:`emdenoise.classical.flatfield.FlatField`): the networks know no beam, and the test's target is
   the clean image under flat illumination. As those filters do, the output stays flat-fielded (the beam is
   not multiplied back) in the input's units at the beam's peak; ``test`` fits a gain/offset on the
   validation pairs as it does for every classical row.
3. Each flat frame is standardised (mean 0, standard deviation 1). tk_r_em's ``predict`` applies no
   normalisation of its own (it casts to float32 and pads odd sides); measured on its test data the networks
   give the same output to within 1e-5 of its spread for inputs scaled by 1e-3 or shifted by 1000, so the
   standardisation only keeps float32 in range.
4. The networks halve the image once: a frame with an odd side is padded by reflection to an even one and
   cropped back. Frames go through in chunks of :data:`CHUNK` (a batch of 16 frames of 256 x 256 px needs
   about 2.5 GB and is slower per frame than 4).
5. The output is mapped back (times the spread, plus the mean) and, for detector values, back to them.

TensorFlow runs on the CPU with as many threads as ``OMP_NUM_THREADS`` says (its own default otherwise).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emdenoise.method import Context, Kind

if TYPE_CHECKING:
    from emdenoise.classical.detector import Counts

PACKAGE = "tk_r_em"
VERSION = "1.0.4"
INSTALL = "pip install 'emdenoise[peer]' (tk_r_em, GPL-3, and TensorFlow CPU)"
PREFIX = "tk_r_em_"  # a row's name: PREFIX + the network's name
# the networks tk_r_em 1.0.4 ships: TEM, STEM and SEM, each at high and low resolution
NETWORKS = ("sfr_hrtem", "sfr_lrtem", "sfr_hrstem", "sfr_lrstem", "sfr_hrsem", "sfr_lrsem")
NAMES = tuple(PREFIX + n for n in NETWORKS)
CHUNK = 4  # frames per network call
_SIGNATURE = "serving_default"


class PeerMissing(ImportError):
    """The optional ``peer`` extra is not installed (its message is one line naming the extra)."""


def _models_dir() -> Path:
    """tk_r_em's folder of networks; :class:`PeerMissing` where the package is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PeerMissing(f"the peer restorer needs the optional tk_r_em package, which is not installed: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def installed() -> tuple[str, ...]:
    """The row names (:data:`NAMES`) whose network is installed here; empty without the extra."""
    try:
        folder = _models_dir()
    except PeerMissing:
        return ()
    return tuple(PREFIX + n for n in NETWORKS if (folder / n / "saved_model.pb").is_file())


def network_of(name: str) -> str:
    """The network of row ``name`` (``tk_r_em_sfr_lrtem`` -> ``sfr_lrtem``); ``KeyError`` naming the known ones."""
    if name not in NAMES:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(NAMES)}")
    return name[len(PREFIX) :]


@functools.lru_cache(maxsize=len(NETWORKS))
def _load(network: str) -> Any:
    """The serving function of tk_r_em's network ``network``: ``f(input_gen=(B, H, W, 1) float32)``."""
    folder = _models_dir() / network
    try:
        import tensorflow as tf
    except ImportError:
        raise PeerMissing(f"the peer restorer needs TensorFlow, which is not installed: {INSTALL}") from None
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started: it keeps its thread pools
            pass
    return tf.saved_model.load(str(folder)).signatures[_SIGNATURE]


def run_network(network: str, frames: np.ndarray) -> np.ndarray:
    """tk_r_em's ``network`` on standardised frames (B, H, W) of one shape, in chunks of :data:`CHUNK`; a frame
    with an odd side is padded by reflection to an even one and cropped back. float64 out."""
    import tensorflow as tf

    serve = _load(network)
    b, h, w = frames.shape
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2)), mode="reflect")
    out = np.empty(frames.shape, dtype=np.float64)
    for first in range(0, b, CHUNK):
        chunk = tf.constant(padded[first : first + CHUNK, :, :, None].astype(np.float32))
        result = next(iter(serve(input_gen=chunk).values())).numpy()
        out[first : first + CHUNK] = result[:, :h, :w, 0]
    return out


@dataclass(frozen=True)
class Prepared:
    """One frame made ready for the network: ``flat`` standardised, and how to map the output back."""

    flat: np.ndarray  # flat-fielded, standardised
    mean: float
    spread: float
    counts: Counts  # the frame as counts: its map back to detector values

    def back(self, restored: np.ndarray) -> np.ndarray:
        return self.counts.back(restored * self.spread + self.mean)


def prepare(image: np.ndarray, scale: float | None) -> Prepared:
    """Steps 1-3 of the module notes for one 2-D frame."""
    from emdenoise.classical import detector
    from emdenoise.classical.flatfield import FlatField

    counts = detector.as_counts(image, scale)
    flat = FlatField.of(counts.values, counts.scale).flat
    mean, spread = float(flat.mean()), float(flat.std())
    spread = spread if spread > 0 else 1.0
    return Prepared((flat - mean) / spread, mean, spread, counts)


@dataclass(frozen=True)
class Peer:
    """tk_r_em's ``network`` as a :class:`~emdenoise.method.Method`: ``gain * restore(frame) + offset`` (the
    gain/offset fitted on validation pairs by ``test``, as for the classical rows; 1 and 0 otherwise)."""

    network: str
    gain: float = 1.0
    offset: float = 0.0
    tuned_on: int = 0  # validation pairs the gain/offset were fitted on (0: not fitted)
    val_psnr: float | None = None
    kind: Kind = "external"

    @property
    def name(self) -> str:
        return PREFIX + self.network

    @property
    def settings(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {
            "source": f"{PACKAGE} {VERSION} (Lobato et al., npj Comput. Mater. 2024; GPL-3): pretrained, external",
            "network": self.network,
            "beam": "fitted (the beam-aware filters' flat-field) and divided out",
            "normalisation": "each flat frame standardised, mapped back after",
            "gain": self.gain,
            "offset": self.offset,
        }
        if self.tuned_on:
            out |= {"tuned_on_val_images": self.tuned_on, "val_psnr": self.val_psnr}
        return out

    def restore(self, frames: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Frames (B, H, W) through the network, flat-fielded, in the input's units; float64 out."""
        frames = np.asarray(frames)
        prepared = [prepare(frame, scale) for frame in frames]
        if not prepared:
            return np.zeros(frames.shape, dtype=np.float64)
        restored = run_network(self.network, np.stack([p.flat for p in prepared]))
        return np.stack([p.back(r) for p, r in zip(prepared, restored)]).reshape(frames.shape)

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        out = self.gain * self.restore(frames, context.count_scale) + self.offset
        return out.astype(np.float32)

    def warm_up(self, frames: np.ndarray, context: Context) -> None:
        """One frame run and thrown away: loading the network and TensorFlow's first call stay out of the timing."""
        self(np.asarray(frames)[:1], context)


def build(name: str) -> Peer:
    """The peer of row ``name`` with no gain/offset, its network loaded now; ``KeyError`` for an unknown name,
    :class:`PeerMissing` (one line naming the extra) where the extra is not installed."""
    network = network_of(name)
    if name not in installed():
        raise PeerMissing(f"peer {name!r} needs the optional tk_r_em package, which is not installed: {INSTALL}")
    _load(network)
    return Peer(network)


def tuned(peer: Peer, noisy: np.ndarray, clean: np.ndarray, data_range: float) -> Peer:
    """``peer`` with its gain/offset fitted on validation pairs ``noisy``/``clean`` (N, H, W), as
    :func:`emdenoise.classical.tuning.tune` fits the classical rows'."""
    from emdenoise.classical.tuning import fit_gain_offset
    from emdenoise.evaluation.metrics import psnr_per_image

    restored = peer.restore(noisy)
    gain, offset = fit_gain_offset(restored, clean)
    score = float(psnr_per_image(gain * restored + offset, clean, data_range).mean())
    return Peer(peer.network, gain, offset, len(noisy), score)
