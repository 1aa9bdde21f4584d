"""The memory budget: how much memory the size a file's header claims may make a reader allocate.

A header can lie (a damaged or hostile file) or ask for more than the machine has (a stack of tens of GB, a
compressed dataset that inflates a thousandfold). Every reader checks what it is about to allocate, from the
header and before a pixel is read, with :func:`check`: over the budget, the file is refused in one line that
names the file, the header field and the size claimed (an :class:`emdenoise.errors.InputError`, exit 2).

The budget, the first of:

- the parameter ``<task>.memory_limit_gb`` when not 0 (the ``denoise``, ``download`` and ``preprocess``
  sections; set by the CLI through :func:`configure`);
- the environment variable :data:`ENV` (``EMDENOISE_MEMORY_LIMIT_GB``, in GB = 10^9 bytes);
- :data:`FRACTION` of the memory available now (``MemAvailable`` in ``/proc/meminfo``; elsewhere the
  physical memory).

What a reader allocates at once is what is checked: one frame for the formats read frame by frame (TIFF pages,
NPY/MRC memory maps, HDF5 3-D datasets, DM/SER), a whole HDF5 chunk when a frame lies in a larger chunk (the
library inflates whole chunks), the whole image for the formats decoded whole (PNG, EMD, an HDF5 2-D
dataset), each tensor of a checkpoint. Uncompressed data are also checked against the file's size
(:func:`check_file_size`): a header that claims more bytes than the file holds is refused the same way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from emdenoise.errors import InputError

ENV = "EMDENOISE_MEMORY_LIMIT_GB"
FRACTION = 0.5  # of the available memory, when neither the parameter nor the environment sets the budget
GB = 10**9

_configured: tuple[float, str] | None = None  # (GB, the parameter's name) from configure()
_parameter = "<task>.memory_limit_gb"  # how the refusal names the parameter that raises the budget


def configure(gb: float, parameter: str) -> None:
    """Use ``gb`` (the value of the parameter ``parameter``, e.g. ``denoise.memory_limit_gb``) as the budget;
    0 leaves it to the environment variable or the machine. The parameter is named in every refusal."""
    global _configured, _parameter
    _parameter = parameter
    _configured = (float(gb), parameter) if gb > 0 else None


def reset() -> None:
    """Back to the environment variable or the machine (the end of a task run in this process)."""
    global _configured, _parameter
    _configured, _parameter = None, "<task>.memory_limit_gb"


def available_bytes() -> int:
    """The memory available now: ``MemAvailable`` of ``/proc/meminfo``, else the physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 8 * GB  # no way to ask: a modest machine


def limit() -> tuple[int, str]:
    """The budget in bytes and where it comes from (for the refusal)."""
    if _configured is not None:
        return int(_configured[0] * GB), _configured[1]
    text = os.environ.get(ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError.at(ENV, None, f"expected a number of GB > 0, got {text!r}")
        return int(value * GB), f"environment variable {ENV}"
    return int(available_bytes() * FRACTION), f"{FRACTION:.0%} of the {human(available_bytes())} available"


def human(nbytes: float) -> str:
    """``"40.0 GB"``, ``"3.2 MB"``: decimal units, as the budget is given."""
    for unit, size in (("TB", 10**12), ("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def check(where: str | Path, field: str | None, nbytes: int, claim: str) -> None:
    """Refuse (one-line InputError) allocating ``nbytes`` for ``where``'s header ``field``; ``claim`` says what
    the header claims (``"shape (10000, 1024, 1024) float32"``)."""
    budget, source = limit()
    if nbytes > budget:
        raise InputError.at(
            where,
            field,
            f"the header claims {claim} = {human(nbytes)} in memory at once, over the memory budget of "
            f"{human(budget)} ({source}); if the file is right, raise it with {_parameter} or {ENV}",
        )


def check_file_size(where: str | Path, field: str | None, path: Path, offset: int, nbytes: int, claim: str) -> None:
    """Refuse uncompressed data that the header puts at ``offset`` with ``nbytes`` bytes when the file is shorter."""
    size = path.stat().st_size
    if offset + nbytes > size:
        raise InputError.at(
            where,
            field,
            f"the header claims {claim} = {human(nbytes)} of pixel data from byte {offset}, the file holds "
            f"{size} bytes (truncated, or a damaged header)",
        )
