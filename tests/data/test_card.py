"""The dataset card as a typed record (emdenoise.data.card): JSON round trip, the checks, the pixel size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emdenoise.data.card import DatasetCard, pixel_size_or_none, read_card
from emdenoise.errors import InputError
from emdenoise.layout import CARD, CARD_FORMAT, DATASET_CARD_KEYS


def _card() -> dict:
    return {
        "format": CARD_FORMAT,
        "image_shape": [8, 8],
        "splits": {"train": {"file": "train.h5", "n": 3}},
        "value_range": {"train": {"noisy": [0.0, 1.0], "clean": [0.0, 1.0]}},
        "normalisation": {"noisy": {"mean": 0.5, "std": 0.2}, "clean": {"mean": 0.4, "std": 0.1}},
        "data_range": 1.0,
        "data_range_definition": "max - min",
        "has_dose": True,
        "source": None,
        "pixel_size_angstrom": 0.2,
        "has_atoms": False,
        "created": "2026-01-01T00:00:00+00:00",
        "has_clean": False,
    }


def test_the_card_round_trips_with_the_same_keys_in_the_same_order(tmp_path):
    doc = _card()
    (tmp_path / CARD).write_text(json.dumps(doc), encoding="utf-8")
    card = read_card(tmp_path)
    assert card.to_json() == doc and list(card.to_json()) == list(doc)
    assert list(card.to_json())[: len(DATASET_CARD_KEYS)] == list(DATASET_CARD_KEYS)
    assert card.data_range == 1.0 and card.pixel_size == 0.2 and not card.has_clean
    assert card.extra == {"created": doc["created"], "has_clean": False}


@pytest.mark.parametrize(
    "edit,field",
    [
        ({"format": "emdenoise-data/0"}, "format"),
        ({"data_range": 0}, "data_range"),
        ({"data_range": True}, "data_range"),
        ({"normalisation": {"noisy": {"mean": 0, "std": 0}, "clean": {"mean": 0, "std": 1}}}, "normalisation.noisy"),
    ],
)
def test_a_bad_card_is_one_line_naming_the_field(edit, field):
    with pytest.raises(InputError, match=f"card.json: {field}") as err:
        DatasetCard.from_json({**_card(), **edit}, "card.json")
    assert "\n" not in str(err.value)


def test_pixel_size_is_a_positive_finite_number_or_none():
    for good, want in ((0.19, 0.19), (2, 2.0), (np.float32(0.5), 0.5), (np.array(0.25), 0.25)):
        assert pixel_size_or_none(good) == pytest.approx(want)
    for bad in (None, True, np.bool_(True), 0, -1.0, float("nan"), float("inf"), "0.2", [0.2], np.array([0.2])):
        assert pixel_size_or_none(bad) is None
