"""The training crops under random symmetries (emdenoise.training.data.dihedral, train.augment: dihedral)."""

from __future__ import annotations

import torch

from emdenoise.training.data import dihedral


def _symmetries(image: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def test_each_crop_gets_one_of_the_eight_symmetries_the_same_in_every_tensor():
    noisy = torch.arange(64 * 5 * 5, dtype=torch.float32).reshape(64, 1, 5, 5)
    clean, valid = 2 * noisy, noisy % 3 == 0
    out_noisy, out_clean, out_valid = dihedral((noisy, clean, valid), key=11)
    seen = set()
    for i in range(64):
        matches = [k for k, s in enumerate(_symmetries(noisy[i])) if torch.equal(s, out_noisy[i])]
        assert len(matches) == 1
        seen.add(matches[0])
        torch.testing.assert_close(out_clean[i], 2 * out_noisy[i])  # the pair stays a pair
        assert torch.equal(out_valid[i], out_noisy[i] % 3 == 0)
    assert seen == set(range(8))  # 64 draws: every symmetry turns up
    again = dihedral((noisy, clean, valid), key=11)
    assert torch.equal(again[0], out_noisy) and not torch.equal(dihedral((noisy,), key=12)[0], out_noisy)
    assert torch.equal(noisy[0, 0, 0], torch.arange(5, dtype=torch.float32))  # the inputs are not changed


def test_non_square_crops_are_only_flipped_and_none_passes():
    noisy = torch.randn(32, 1, 4, 6)
    out, nothing = dihedral((noisy, None), key=3)
    assert out.shape == noisy.shape and nothing is None
    flips = [noisy, noisy.flip(-1), noisy.flip(-2), noisy.flip(-1).flip(-2)]
    for i in range(32):
        assert any(torch.equal(f[i], out[i]) for f in flips)
