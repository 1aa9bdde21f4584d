"""The typed records of the evaluation: written with the keys of before (plus the format), read back equal,
files written before the records existed still read."""

import json

import pytest

from emdenoise.evaluation.records import TEST_FORMAT, MethodSummary, SplitMetrics, TestMetrics


def test_test_metrics_round_trip_with_the_keys_of_before(test_metrics):
    record = TestMetrics.from_json(test_metrics)  # written before the records: no format key
    assert record.methods["gaussian"].params["sigma"] == 1.5 and record.methods["noisy"].kind == "input"
    written = record.to_json()
    assert written["format"] == TEST_FORMAT
    assert set(test_metrics) <= set(written)
    assert "generalisation" not in written and "truth" not in written  # absent, as before: not null
    assert written["methods"]["unet"]["psnr_mean"] == 25.0 and "atoms" not in written["methods"]["unet"]
    assert TestMetrics.from_json(json.loads(json.dumps(written))) == record


def test_a_record_names_what_it_cannot_read():
    with pytest.raises(ValueError, match="format: expected 'emdenoise-test/1', got 'emdenoise-test/9'"):
        TestMetrics.from_json({"format": "emdenoise-test/9", "n_images": 1, "data_range": 1.0, "methods": {}})
    with pytest.raises(ValueError, match="data_range: expected in a TestMetrics record, missing"):
        TestMetrics.from_json({"n_images": 1, "methods": {}})


def test_the_optional_parts_are_written_where_present():
    row = MethodSummary("deep", psnr_mean=30.0, atoms={"f1": 0.5}, psnr_by_dose=[29.0, None])
    part = SplitMetrics({"unet": row}, None, True, 0.2, 7, {"f1": 0.77})
    data = part.to_json()
    assert data["n_images"] == 7 and data["truth"] == {"f1": 0.77}
    assert data["methods"]["unet"]["psnr_by_dose"] == [29.0, None] and "device" not in data["methods"]["unet"]
    assert SplitMetrics.from_json(data) == part
