"""Reading the split files: the optional pixel size and true atom columns (contract 2), checked."""

import numpy as np
import pytest
from noisy_images import lattice_split
from support import write_split

from emdenoise.data.splits import load_split
from emdenoise.errors import InputError


def test_atoms_and_pixel_size_are_read_and_cut_with_the_images(tmp_path):
    noisy, clean, dose, atoms = lattice_split(np.random.default_rng(0), 3, 32, 6.0, "hex", 20.0, 0.25)
    write_split(tmp_path / "test.h5", noisy, clean, dose, atoms)
    split = load_split(tmp_path, "test")
    assert split.has_atoms and split.pixel_size is not None and split.pixel_size.tolist() == [0.25] * 3
    offsets = atoms["atom_offsets"]
    for i in range(3):
        sites, vacant = split.atoms(i)
        np.testing.assert_allclose(sites, atoms["atom_yx"][offsets[i] : offsets[i + 1]])
        assert vacant.dtype == bool and vacant.sum() == 2
    first = load_split(tmp_path, "test", max_images=2)
    assert len(first) == 2 and len(first.atom_yx) == offsets[2] and len(first.atom_offsets) == 3


def test_a_split_without_atoms_has_none_and_a_partial_set_is_an_input_error(tmp_path):
    noisy, clean, dose, atoms = lattice_split(np.random.default_rng(1), 2, 32, 6.0, "hex", 20.0, 0.25)
    write_split(tmp_path / "test.h5", noisy, clean, dose)
    assert not load_split(tmp_path, "test").has_atoms
    write_split(tmp_path / "val.h5", noisy, clean, dose, {"atom_offsets": atoms["atom_offsets"]})
    with pytest.raises(InputError, match="atom_yx") as err:
        load_split(tmp_path, "val")
    assert "val.h5" in err.value.message
