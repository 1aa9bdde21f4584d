"""Classical denoisers: the filters and their tuning (:mod:`~emdenoise.classical.filters`) and the beam estimated
from a frame's own counts (:mod:`~emdenoise.classical.flatfield`)."""
