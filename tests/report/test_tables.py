"""How a row's kind and settings read in the reports: the external peer's row names its network and level."""

from emdenoise.report.figures import kind_label
from emdenoise.report.tables import settings


def test_an_external_row_reads_as_the_peer_with_its_network_and_level():
    row = {"kind": "external", "params": {"network": "sfr_hrtem", "gain": 0.48123, "offset": 0.52}}
    shown = settings(row)
    assert "network=sfr_hrtem" in shown and "gain 0.481, offset 0.52" in shown and "not trained by us" in shown
    assert settings({"kind": "external", "params": {}}) == ""  # an external row of another kind of method
    assert kind_label("external") == "external (peer)" and kind_label("classical") == "classical"
