"""The parameters schema: defaults, validation, did-you-mean hints, overrides, shipped files."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from emdenoise.config import params
from emdenoise.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_cover_every_section():
    merged = params.validate({}).as_dict()
    assert {"download", "preprocess", "train", "test", "denoise", "study"} == set(merged) == set(params.schema())
    for section, fields in params.schema().items():
        for key, fld in fields.items():
            once = params.validate_value("x", key, fld, fld.default)
            assert params.validate_value("x", key, fld, once) == once == merged[section][key]


def test_sections_are_frozen_typed_objects_that_name_their_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  unet_base: 16\n")
    p = params.load(path)
    assert isinstance(p.train, params.TrainParams) and p.train.epochs == 3 and p.train.where == str(path)
    assert p.train.model_options["unet_base"] == 16 and p.train.as_dict()["unet_base"] == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.epochs = 4  # type: ignore[misc]
    changed = p.train.replace(epochs=7, unet_base=8)
    assert (changed.epochs, changed.model_options["unet_base"], p.train.epochs) == (7, 8, 3)
    with pytest.raises(InputError, match=f"^{path}: train.epochs: expected an integer"):
        p.train.replace(epochs="many")
    assert p.train.model_names() == ["sciml_ae"] and len(p.train.replace(model="all").model_names()) == 8


@pytest.mark.parametrize(
    "text,expect",
    [
        (
            "download:\n  dose_min: 50\n  dose_max: 10\n",
            "download.dose_min: expected <= download.dose_max (10.0), got 50.0",
        ),
        (
            "denoise:\n  tile_size: 64\n  tile_overlap: 40\n",
            "denoise.tile_overlap: expected at most tile_size / 2 (32), got 40",
        ),
        (
            "download:\n  stem_dose_min: 5000\n  stem_dose_max: 100\n",
            "download.stem_dose_min: expected <= download.stem_dose_max (100.0), got 5000.0",
        ),
        (
            "download:\n  imaging: mixed\n",
            "download.stem_units: expected electrons or mean when download.imaging is mixed (HRTEM images are in "
            "electrons per incident electron; detector units would put two scales into one split), got 'detector'",
        ),
        (
            "download:\n  source: abtem\n  imaging: haadf\n",
            "download.imaging: expected hrtem when download.source is abtem, got 'haadf'",
        ),
    ],
)
def test_cross_field_checks_are_in_the_schema(tmp_path, text, expect):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        params.load(path)
    assert err.value.message == f"{path}: {expect}"


@pytest.mark.parametrize("name", ["default", "quickstart"])
def test_shipped_parameter_files_are_valid(name):
    merged = params.load(ROOT / "workspace" / "parameters" / f"{name}.parameters.yaml")
    assert merged.train.model == ["sciml_ae"]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "workspace" / "parameters").glob("*.parameters.yaml")), ids=lambda p: p.name
)
def test_every_shipped_parameter_file_validates_and_is_documented(path):
    params.load(path)  # raises InputError on an unknown key, a wrong type or a value out of range
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert any(path.name in doc.read_text() for doc in docs), f"{path.name} is not mentioned in README.md or docs/"


def test_default_file_is_the_documented_benchmark():
    merged = params.load(ROOT / "workspace/parameters/default.parameters.yaml")
    assert merged.download.source == "stfc"
    assert (merged.train.batch_size, merged.train.epochs, merged.train.lr) == (128, 2, 0.01)


def test_quickstart_is_synthetic():
    assert params.load(ROOT / "workspace/parameters/quickstart.parameters.yaml").download.source == "synthetic"


def test_test_zoo_names_the_zoo_models(tmp_path):
    assert params.load(write(tmp_path, "test:\n  models: all\n")).test.zoo == ["none"]  # no zoo rows by default
    assert params.load(write(tmp_path, "test:\n  zoo: all\n")).test.zoo == "all"
    assert params.load(write(tmp_path, "test:\n  zoo: hrtem-ffdnet\n")).test.zoo == ["hrtem-ffdnet"]
    assert params.load(ROOT / "workspace/parameters/quickstart.parameters.yaml").test.zoo == [
        "hrtem-prior-unet",
        "hrtem-unet",
        "hrtem-ffdnet",
    ]


def test_test_peers_names_tk_r_em_networks_and_defaults_to_none(tmp_path):
    assert params.load(write(tmp_path, "test:\n  models: all\n")).test.peers == ["none"]  # no peer rows by default
    assert params.load(write(tmp_path, "test:\n  peers: all\n")).test.peers == "all"
    chosen = params.load(write(tmp_path, "test:\n  peers: [tk_r_em_sfr_lrtem, tk_r_em_sfr_hrtem]\n")).test.peers
    assert chosen == ["tk_r_em_sfr_lrtem", "tk_r_em_sfr_hrtem"]
    with pytest.raises(InputError) as err:
        params.load(write(tmp_path, "test:\n  peers: tk_r_em_sfr_hrtme\n"))
    assert "test.peers" in err.value.message and "did you mean 'tk_r_em_sfr_hrtem'" in err.value.message


def test_unknown_key_gets_did_you_mean(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(InputError) as err:
        params.load(path)
    msg = err.value.message
    assert str(path) in msg and "train.epoch" in msg and "did you mean 'epochs'" in msg


def test_unknown_section_gets_did_you_mean(tmp_path):
    with pytest.raises(InputError, match="did you mean 'train'"):
        params.load(write(tmp_path, "trian:\n  epochs: 3\n"))


@pytest.mark.parametrize(
    "text,field,expect",
    [
        ("train:\n  epochs: two\n", "train.epochs", "an integer in [1, 100000], got 'two'"),
        ("train:\n  epochs: 0\n", "train.epochs", "got 0"),
        ("train:\n  lr: .nan\n", "train.lr", "a number"),
        ("train:\n  model: unett\n", "train.model", "did you mean 'unet'"),
        ("train:\n  model: [unet, unet]\n", "train.model", "repeat"),
        ("test:\n  baselines: [gausian]\n", "test.baselines", "did you mean 'gaussian'"),
        ("test:\n  zoo: [hrtem-ffdnt]\n", "test.zoo", "did you mean 'hrtem-ffdnet'"),
        ("train:\n  device: gpu\n", "train.device", "auto, cpu, cuda or cuda:N"),
        ("test:\n  device: cuda:x\n", "test.device", "auto, cpu, cuda or cuda:N"),
        ("train:\n  rednet_depth: 15\n", "train.rednet_depth", "an even number, got 15"),
        ("download:\n  source: ftp-thing\n", "download.source", "synthetic"),
        ("download:\n  source: stcf\n", "download.source", "did you mean 'stfc'"),
        ("download:\n  source: OSM\n", "download.source", "did you mean 'osn'"),
        ("download:\n  source: minibath\n", "download.source", "did you mean 'minibatch'"),
        ("download:\n  dose_min: 50\n  dose_max: 10\n", "download.dose_min", "<= download.dose_max"),
        ("train:\n  epochs: true\n", "train.epochs", "got True"),
        ("train: 5\n", "train", "expected a mapping"),
    ],
)
def test_bad_values_name_the_file_field_and_expectation(tmp_path, text, field, expect):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        params.load(path)
    msg = err.value.message
    assert msg.startswith(str(path)) and field in msg and expect in msg and "\n" not in msg


def test_yaml_syntax_error_gives_line(tmp_path):
    with pytest.raises(InputError, match=r"line \d+, column \d+: invalid YAML"):
        params.load(write(tmp_path, "train:\n  epochs: [1,\n"))


def test_missing_and_folder_parameter_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        params.load(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="found a folder"):
        params.load(tmp_path)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    merged = params.load(path, ["train.epochs=5", "train.model=[unet, dncnn]", "test.models=all"])
    assert merged.train.epochs == 5 and merged.train.model == ["unet", "dncnn"] and merged.test.models == "all"
    with pytest.raises(InputError, match="section.key=value"):
        params.load(path, ["epochs=5"])
    with pytest.raises(InputError, match="train.epochs"):
        params.load(path, ["train.epochs=-1"])


@pytest.mark.parametrize(
    "override,expect",
    [
        ("download.sourse=stfc", "--set: download.sourse: unknown key (did you mean 'source'?)"),
        ("trian.epochs=3", "--set: trian: unknown section (did you mean 'train'?)"),
        ("train.epochs=0", "--set: train.epochs: expected an integer in [1, 100000], got 0"),
        (
            "download.source=stcf",
            ("--set: download.source: expected one of synthetic, abtem, stfc, osn, minibatch (did you mean 'stfc'?), "),
        ),
    ],
)
def test_override_mistakes_name_set_not_the_file(tmp_path, override, expect):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    with pytest.raises(InputError) as err:
        params.load(path, [override])
    assert err.value.message.startswith(expect), err.value.message
    assert str(path) not in err.value.message and "\n" not in err.value.message


def test_an_override_may_replace_a_bad_value_of_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 0\n")
    assert params.load(path, ["train.epochs=4"]).train.epochs == 4
    with pytest.raises(InputError, match=f"^{path}: train.epochs"):  # the file's own mistake names the file
        params.load(path, ["train.lr=0.1"])


# Whatever a user writes, the parser answers with a validated mapping or an InputError, never a crash.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    section=st.sampled_from(list(params.schema()) + ["bogus"]),
    key=st.sampled_from(sorted({k for f in params.schema().values() for k in f}) + ["bogus"]),
    value=yaml_values,
)
def test_parser_never_crashes(section, key, value):
    try:
        merged = params.validate({section: {key: value}})
    except InputError as exc:
        assert "\n" not in exc.message
    else:
        assert merged.as_dict()[section][key] is not None


# Numbers with no maximum on purpose: how much of the data to use or accept, where a huge value means "all of
# it" and is only compared with sizes (tested end to end in tests/tasks/test_bad_input.py). Every other number
# has a maximum, so that a huge value is one line instead of a crash deep in torch or numpy, or a run that never
# ends.
UNBOUNDED = {
    "download.max_archive_bytes",
    "train.max_train_images",
    "test.max_test_images",
    "test.tune_images",
    "study.train_sizes",
    "study.max_test_images",
}


def test_every_number_has_a_maximum_unless_a_huge_value_means_all():
    unbounded = {
        f"{section}.{key}"
        for section, fields in params.schema().items()
        for key, fld in fields.items()
        if fld.kind in ("int", "float", "ints") and fld.max is None
    }
    assert unbounded == UNBOUNDED
    for section, fields in params.schema().items():
        for key, fld in fields.items():
            if fld.max is not None and fld.kind in ("int", "float"):
                too_big = fld.max + 1 if fld.kind == "int" else fld.max * 2
                with pytest.raises(InputError, match=f"{section}.{key}: expected .*in \\[") as err:
                    params.validate({section: {key: too_big}}, where="p.yaml")
                assert str(fld.max) in err.value.message


def test_reference_table_lists_every_key():
    text = subprocess.run(
        [sys.executable, "-m", "emdenoise", "params"], capture_output=True, text=True, check=True
    ).stdout
    for section, fields in params.schema().items():
        assert f"`{section}:`" in text
        for key in fields:
            assert f"| `{key}` |" in text
    # the docs' parameters page embeds exactly the same reference (regenerate it with the command on the page)
    page = (ROOT / "docs" / "reference" / "parameters.md").read_text()
    block = page.split("<!-- PARAMS:BEGIN -->\n", 1)[1].split("\n<!-- PARAMS:END -->", 1)[0]
    assert block == text.strip(), "docs/reference/parameters.md is stale: paste `emdenoise params` into it"


def test_yaml_round_trip_of_defaults(tmp_path):
    path = write(tmp_path, yaml.safe_dump(params.defaults().as_dict()))
    assert params.load(path) == params.defaults()


def test_stem_imaging_values_are_checked(tmp_path):
    assert (
        params.load(write(tmp_path, "download:\n  imaging: mixed\n  stem_units: electrons\n")).download.imaging
        == "mixed"
    )
    with pytest.raises(
        InputError, match="download.imaging: expected one of 'hrtem', 'haadf', 'abf', 'mixed', got 'bf'"
    ):
        params.load(write(tmp_path, "download:\n  imaging: bf\n"))
    with pytest.raises(InputError, match="download.stem_detector_gain"):
        params.load(write(tmp_path, "download:\n  stem_detector_gain: 0\n"))
