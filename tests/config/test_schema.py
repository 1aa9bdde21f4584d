"""The schema machinery on a section of its own: it needs nothing of the package's sections or registries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from emdenoise.config.schema import (
    Section,
    apply_overrides,
    param,
    read_yaml,
    reference_markdown,
    validate_sections,
)
from emdenoise.errors import InputError


@dataclass(frozen=True)
class Toy(Section):
    NAME: ClassVar[str] = "toy"
    steps: int = param("int", 3, "how many", min=1, max=10)
    mode: str = param("str", "fast", "how", choices=lambda: ("fast", "slow"))
    sizes: list[int] = param("ints", [1, 2], "which", min=1)


SECTIONS = {"toy": Toy}


def test_a_section_validates_converts_and_hints():
    built = validate_sections(SECTIONS, {"toy": {"steps": 4.0, "sizes": [3, 5.0]}}, "t.yaml")["toy"]
    assert isinstance(built, Toy) and built.steps == 4 and built.sizes == [3, 5] and built.where == "t.yaml"
    with pytest.raises(InputError, match=r"^t.yaml: toy.stpes: unknown key \(did you mean 'steps'\?\)"):
        validate_sections(SECTIONS, {"toy": {"stpes": 4}}, "t.yaml")
    with pytest.raises(InputError, match=r"^t.yaml: tyo: unknown section \(did you mean 'toy'\?\)"):
        validate_sections(SECTIONS, {"tyo": {}}, "t.yaml")
    with pytest.raises(InputError, match=r"toy.mode: expected one of 'fast', 'slow', got 'slwo' \(did you mean"):
        validate_sections(SECTIONS, {"toy": {"mode": "slwo"}}, "t.yaml")
    with pytest.raises(InputError, match=r"toy.sizes: expected a list of distinct integers >= 1, got repeated"):
        validate_sections(SECTIONS, {"toy": {"sizes": [2, 2]}}, "t.yaml")
    assert built.replace(steps=7).steps == 7
    with pytest.raises(InputError, match=r"toy.steps: expected an integer in \[1, 10\], got 11"):
        built.replace(steps=11)


def test_overrides_name_the_command_line_and_files_name_themselves(tmp_path):
    assert apply_overrides(SECTIONS, {}, ["toy.steps=5"]) == {"toy": {"steps": 5}}
    with pytest.raises(InputError, match=r"^--set: toy.steps: expected an integer in \[1, 10\], got 0"):
        apply_overrides(SECTIONS, {}, ["toy.steps=0"])
    with pytest.raises(InputError, match=r"^--set: toy: expected section.key=value"):
        apply_overrides(SECTIONS, {}, ["toy"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("toy: [1,\n")
    with pytest.raises(InputError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        read_yaml(bad, "toy")
    bad.write_text("- 1\n")
    with pytest.raises(InputError, match=r"bad.yaml: expected a mapping of sections \(toy\), got list"):
        read_yaml(bad, "toy")


def test_the_reference_lists_every_key():
    text = reference_markdown({"toy": Toy.fields()})
    assert "#### `toy:`" in text and "| `steps` | `3` | an integer in [1, 10] | how many |" in text
    assert "| `mode` | `fast` | one of 'fast', 'slow' | how |" in text
