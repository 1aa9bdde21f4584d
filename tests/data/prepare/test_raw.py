"""Finding the raw layout among a download's paths."""

from __future__ import annotations

import pytest
from download_servers import (
    LAYOUT,
)

from emdenoise.data.prepare.raw import find_layout_root
from emdenoise.errors import InputError


def test_the_layout_is_found_at_the_shallowest_folder_and_missing_files_are_named():
    assert find_layout_root(LAYOUT + ("README",), "x") == ""
    assert find_layout_root([f"a/b/{p}" for p in LAYOUT] + [f"c/{LAYOUT[0]}"], "x") == "a/b/"
    with pytest.raises(InputError, match="test/graphene_img_clean.h5 under 'd/'"):
        find_layout_root([f"d/{p}" for p in LAYOUT[:3]], "x")
    with pytest.raises(InputError, match="more than one folder"):
        find_layout_root([f"{r}/{p}" for r in ("a", "b") for p in LAYOUT], "x")
