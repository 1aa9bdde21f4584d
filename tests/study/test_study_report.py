"""The study report's formatting helpers, and the one markdown-table writer every report uses."""

import pytest

from emdenoise.report import tables


def test_durations_read_well():
    assert [tables.duration(x) for x in (42.4, 150, 3 * 3600 + 360, 4.1 * 86400)] == [
        "42 s",
        "2.5 min",
        "3.1 h",
        "4.1 days",
    ]


def test_the_table_writer_aligns_columns_and_refuses_a_mismatch():
    lines = tables.table(["model", "6", "12"], "lrr", [["unet", "20.50", "-"]])
    assert lines == ["| model | 6 | 12 |", "|---|---:|---:|", "| unet | 20.50 | - |"]
    with pytest.raises(ValueError):
        tables.table(["a", "b"], "l", [])


def test_numbers_that_are_not_finite_read_as_a_dash():
    assert [tables.num(v, ".2f") for v in (1.234, None, float("nan"), float("inf"), True, "x")] == [
        "1.23",
        "-",
        "-",
        "-",
        "-",
        "-",
    ]
    assert tables.ranked({"a": {"psnr_mean": 10.0}, "b": {"psnr_mean": None}, "c": {"psnr_mean": 20.0}}) == [
        "c",
        "a",
        "b",
    ]
