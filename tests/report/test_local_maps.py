"""The local maps figure: one row per frame, the input and each method's consistency map, a panel that says so
where the check has no map."""

import numpy as np

from emdenoise.report.figures import save
from emdenoise.report.local_maps import local_maps_figure


def test_the_local_maps_figure_draws_every_panel(tmp_path):
    rng = np.random.default_rng(0)
    inputs = [rng.poisson(20.0, (64, 64)).astype(float) for _ in range(2)]
    maps = {"noisy": [np.zeros((2, 2)), np.zeros((0, 0))], "gaussian": [np.full((2, 2), 0.2), np.ones((2, 2))]}
    fig = local_maps_figure(inputs, maps, 0.07, ["a", "b"], {"gaussian": "uPSNR 30.00 dB"})
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 2 * 3 and len(fig.axes) == 2 * 3 + 1  # 2 rows x (input + 2 methods), the colour bar
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("not counts" in t for t in texts)  # the undefined map says why it is empty
    assert "uPSNR 30.00 dB" in fig.axes[2].get_title()
    save(fig, tmp_path / "maps.png")
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
