"""The peer restorer (tk_r_em, the optional ``peer`` extra) as a method row: the real network on small beam-lit
lattice frames, and the one-line errors where the extra is missing (those run everywhere: the import is made to
fail)."""

import logging
import sys

import numpy as np
import pytest
from noisy_images import atom_image, beam, lattice_sites, poisson_noise

from emdenoise.classical.tuning import fit_gain_offset
from emdenoise.data.splits import Split
from emdenoise.errors import InputError
from emdenoise.evaluation import run as evaluation
from emdenoise.evaluation import scorer as scoring
from emdenoise.evaluation.metrics import psnr_per_image
from emdenoise.inference import methods, peer
from emdenoise.method import Context

LOG = logging.getLogger("test")


def _pairs(seed: int, n: int, size: int = 96, dose: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """Lattice frames under a Gaussian beam with Poisson noise at ``dose`` (noisy, clean: flat illumination)."""
    rng = np.random.default_rng(seed)
    clean = np.stack([atom_image(size, lattice_sites(size, 7.0 + 0.5 * i, angle=0.2 + 0.3 * i)) for i in range(n)])
    return poisson_noise(rng, clean * beam(size), dose), clean


@pytest.mark.slow
@pytest.mark.extra("peer")
def test_the_peer_row_beats_the_noisy_input_on_beam_lit_lattices():
    val_noisy, val_clean = _pairs(0, 2)
    noisy, clean = _pairs(1, 2)
    data_range = float(clean.max() - clean.min())
    method = evaluation.tune_peer("tk_r_em_sfr_lrtem", Split("val", val_noisy, val_clean), data_range, LOG)
    assert method.kind == "external" and method.name == "tk_r_em_sfr_lrtem"
    assert method.settings["tuned_on_val_images"] == 2 and "tk_r_em" in method.settings["source"]
    scorer = scoring.Scorer(Split("test", noisy, clean), data_range, figure_indices=[])
    row = evaluation.run_method(method, scorer, batch_size=2)
    gain, offset = fit_gain_offset(val_noisy, val_clean)  # the noisy input given the same gain/offset treatment
    plain = float(psnr_per_image(gain * noisy + offset, clean, data_range).mean())
    assert np.mean(row.psnr) > plain + 1.0, (np.mean(row.psnr), plain)


@pytest.mark.slow
@pytest.mark.extra("peer")
def test_the_peer_keeps_odd_shapes_and_detector_offsets():
    noisy, _ = _pairs(2, 1, size=63)
    method = peer.build("tk_r_em_sfr_lrtem")
    frame = noisy[:, :, :62]  # 63 x 62: the odd side is padded and cropped back
    out = method(frame, Context())
    assert out.shape == frame.shape and out.dtype == np.float32 and np.isfinite(out).all()
    shifted = method(100.0 + 3.0 * frame, Context())  # detector values: offset 100, gain 3 per count
    assert shifted.shape == frame.shape and np.isfinite(shifted).all()
    assert abs(float(shifted.mean()) - (100.0 + 3.0 * float(out.mean()))) < 0.2 * 3.0 * float(out.mean())


def test_without_tk_r_em_every_way_in_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tk_r_em", None)  # import tk_r_em now fails, as where it is not installed
    assert peer.installed() == ()
    with pytest.raises(peer.PeerMissing) as err:
        peer.build("tk_r_em_sfr_lrtem")
    assert "emdenoise[peer]" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError) as bad:
        evaluation.find_peers(["tk_r_em_sfr_lrtem"], "p.yaml")
    assert "test.peers" in bad.value.message and "emdenoise[peer]" in bad.value.message
    assert "\n" not in bad.value.message
    with pytest.raises(InputError, match="no peer network is installed"):
        evaluation.find_peers("all", "p.yaml")
    assert evaluation.find_peers(["none"], "p.yaml") == []
    with pytest.raises(InputError, match=r"study\.peers.*emdenoise\[peer\].*or set study\.peers: none"):
        evaluation.find_peers(["tk_r_em_sfr_hrtem"], "p.yaml", field="study.peers")
    with pytest.raises(InputError) as bad:  # denoise --method tk_r_em_sfr_lrtem
        methods.classical_method("tk_r_em_sfr_lrtem", Context())
    assert "denoise.method" in bad.value.message and "emdenoise[peer]" in bad.value.message


def test_without_tensorflow_the_error_names_the_extra(monkeypatch, tmp_path):
    package = tmp_path / "tk_r_em"  # a package with one network's folder, as tk_r_em installs them
    (package / "models" / "sfr_lrtem").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "sfr_lrtem" / "saved_model.pb").write_bytes(b"")
    monkeypatch.delitem(sys.modules, "tk_r_em", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    peer._load.cache_clear()
    try:
        if peer._models_dir() != package / "models":
            pytest.skip("an installed tk_r_em comes first on sys.path")
        assert "tk_r_em_sfr_lrtem" in peer.installed() and "tk_r_em_sfr_hrtem" not in peer.installed()
        with pytest.raises(peer.PeerMissing, match=r"TensorFlow.*emdenoise\[peer\]"):
            peer.build("tk_r_em_sfr_lrtem")
        with pytest.raises(peer.PeerMissing, match="tk_r_em_sfr_hrtem"):
            peer.build("tk_r_em_sfr_hrtem")  # a network this package does not hold
    finally:
        peer._load.cache_clear()


def test_unknown_peers_are_named_with_the_known_ones():
    with pytest.raises(KeyError, match="tk_r_em_sfr_hrtem"):
        peer.network_of("tk_r_em_nope")
    with pytest.raises(InputError, match=r"denoise\.method.*known: tk_r_em_sfr_hrtem"):
        methods.classical_method("tk_r_em_nope", Context())
    assert peer.network_of("tk_r_em_sfr_hrstem") == "sfr_hrstem"
