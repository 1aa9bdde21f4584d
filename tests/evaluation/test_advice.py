"""The decision rule: a pretrained model as is, fine-tuned, or a classical filter, from the consistency check of
the frames, the model's range and how many frames there are (docs/guides/decide.md)."""

import json

import pytest

from emdenoise.evaluation import advice

OK, BAD, UNSURE = ({"verdict": v} for v in ("consistent", "inconsistent", "cannot tell"))
MANY, FEW = 4 * advice.FINE_TUNE_PIXELS, advice.FINE_TUNE_PIXELS // 10


@pytest.mark.parametrize(
    ("checks", "in_range", "pixels", "choice"),
    [
        ([OK, OK, UNSURE], True, FEW, "use as is"),
        ([OK, OK], None, FEW, "use as is"),  # the range unknown: the check is the evidence
        ([OK, BAD], True, MANY, "fine-tune"),
        ([OK, BAD], True, FEW, "classical"),
        ([OK, OK], False, MANY, "fine-tune"),  # outside the trained range, enough frames to train on
        ([OK, OK], False, FEW, "classical"),
        ([UNSURE, UNSURE], True, MANY, "classical"),  # nothing confirms the model's output
    ],
)
def test_the_rule_for_a_model(checks, in_range, pixels, choice):
    result = advice.advise("deep", checks, in_range, pixels)
    assert result.choice == choice, result
    assert result.line().startswith(f"advice: {choice}: ")


def test_a_classical_filter_and_the_hook_for_scores_without_truth():
    assert advice.advise("classical", [OK, UNSURE], None, FEW).choice == "classical"
    assert advice.advise("classical", [BAD], None, FEW).choice == "classical (gentler)"
    assert advice.advise("deep", [OK], True, FEW, scores_prefer="classical").choice == "classical"
    assert advice.advise("deep", [UNSURE], True, FEW, scores_prefer="model").choice == "use as is"
    assert advice.advise("deep", [], True, MANY).choice == "no advice"


def test_version_1_records_count_by_their_flag():
    old = [{"inconsistent": False, "deviation": 0.01}, {"inconsistent": True, "deviation": 0.2}]
    assert advice.advise("deep", old, True, MANY).choice == "fine-tune"


def _record(frames, status="matched", kind="deep", shape=(512, 512)):
    return {
        "model": {"kind": kind},
        "frames": len(frames),
        "input": {"images": [{"shape": [len(frames), *shape]}]},
        "sampling": [{"status": status}],
        "consistency": {"frames": frames},
    }


def test_advice_from_sidecar_records_and_the_zoo_models_dose_range():
    dose = advice.model_dose_range("zoo:hrtem-ffdnet")
    assert dose is not None and dose[0] < dose[1]
    assert advice.model_dose_range("wiener") is None
    inside = [dict(OK, mean_counts=(dose[0] + dose[1]) / 2)] * 2
    below = [dict(OK, mean_counts=dose[0] / 4)] * 2
    assert advice.for_run([_record(inside)], dose).choice == "use as is"
    assert advice.for_run([_record(inside)], dose, scores_prefer="classical").choice == "classical"
    assert advice.for_run([_record(below)], dose).choice == "classical"  # 0.5 Mpx: too few to fine-tune
    assert advice.for_run([_record(below * 4, shape=(1024, 1024))], dose).choice == "fine-tune"
    assert "range unknown" in advice.for_run([_record(inside, status="unknown")], dose).reason


@pytest.mark.parametrize(
    "ranked,margins,expected",
    [
        (["m", "gaussian", "wiener", "noisy"], {"gaussian": (5.0, 1.0), "wiener": (9.0, 2.0)}, "model"),
        (["m", "gaussian", "wiener", "noisy"], {"gaussian": (1.0, 1.0), "wiener": (9.0, 2.0)}, None),
        (["wiener", "m", "gaussian", "noisy"], {"m": (8.0, 1.0), "gaussian": (9.0, 2.0)}, "classical"),
        (["wiener", "m", "gaussian", "noisy"], {"m": (1.0, 1.0), "gaussian": (9.0, 2.0)}, None),
        (["noisy", "m", "gaussian"], {"m": (8.0, 1.0), "gaussian": (9.0, 2.0)}, None),
        (["m", "noisy"], {"noisy": (8.0, 1.0)}, None),
    ],
)
def test_the_scores_prefer_a_method_only_beyond_two_standard_errors(ranked, margins, expected):
    as_json = {name: {"vs": ranked[0], "delta_umse": d, "se": se} for name, (d, se) in margins.items()}
    assert advice.scores_prefer("m", ranked, as_json) == expected


def test_a_stem_models_range_is_its_frames_mean_counts_not_its_probe_dose(tmp_path, monkeypatch):
    """A STEM card gives electrons per probe position (10^3-10^5) and the mean counts per pixel its frames had
    (HAADF: a small part of them): the advice compares the frames' mean counts with the latter."""
    from support import save_model

    from emdenoise import zoo

    save_model(tmp_path / "lab", "dncnn", depth=3, channels=8)
    card = {"dose_e_per_px": [3000, 300000], "mean_counts_per_px": [0.3, 150.0]}
    (tmp_path / "lab" / "dncnn" / zoo.CARD_JSON).write_text(json.dumps(card))
    monkeypatch.setenv(zoo.ENV, str(tmp_path / "lab"))
    assert advice.model_dose_range("zoo:dncnn") == [0.3, 150.0]
