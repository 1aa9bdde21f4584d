"""Specimens as atoms: lattices of the three materials, grains, vacancies, holes, bilayers, contamination."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from emdenoise.data.simulate import scenes
from emdenoise.data.simulate.scenes import MATERIALS, draw_scene

SIZE, PIXEL = 200, 0.25  # a 50 A field


def columns_per_atom_count(scene: scenes.Scene) -> int:
    """Atoms the present columns should contribute (each column's stack)."""
    mat = MATERIALS[scene.material]
    per_z = {max(zs): len(zs) for _, _, zs in mat.basis}
    return sum(per_z[int(z)] for z in scene.columns_z[~scene.columns_vacant])


@pytest.mark.parametrize(
    ("name", "nn"), [("graphene", 2.46 / math.sqrt(3)), ("mos2", 3.16 / math.sqrt(3)), ("srtio3", 3.905 / 2)]
)
def test_materials_have_their_spacing(name, nn):
    assert MATERIALS[name].nearest_neighbour == pytest.approx(nn, rel=1e-9)


@pytest.mark.parametrize("name", list(MATERIALS))
def test_a_perfect_lattice_fills_the_field_at_the_right_density(name):
    mat = MATERIALS[name]
    scene = draw_scene(np.random.default_rng(1), SIZE, PIXEL, name, kind="lattice")
    extent = SIZE * PIXEL
    expected = len(mat.basis) * extent**2 / abs(np.linalg.det(mat.cell))
    assert len(scene.columns_z) == pytest.approx(expected, rel=0.03)
    assert not scene.columns_vacant.any()
    lo, hi = -0.5 * PIXEL, extent - 0.5 * PIXEL
    assert ((scene.columns_yx_A >= lo) & (scene.columns_yx_A < hi)).all()
    assert ((scene.atoms_yx_A >= lo) & (scene.atoms_yx_A < hi)).all()
    dist, _ = cKDTree(scene.columns_yx_A).query(scene.columns_yx_A, k=2)
    np.testing.assert_allclose(dist[:, 1], mat.nearest_neighbour, rtol=1e-6)
    assert len(scene.z) == columns_per_atom_count(scene)
    assert set(np.unique(scene.columns_z)) == {max(zs) for _, _, zs in mat.basis}


def test_vacuum_has_no_atoms_and_amorphous_no_columns():
    rng = np.random.default_rng(0)
    empty = draw_scene(rng, SIZE, PIXEL, kind="vacuum")
    assert len(empty.z) == 0 and len(empty.columns_z) == 0
    amorphous = draw_scene(rng, SIZE, PIXEL, kind="amorphous")
    assert len(amorphous.columns_z) == 0
    assert len(amorphous.z) == pytest.approx(0.3 * (SIZE * PIXEL) ** 2, rel=0.1)
    with pytest.raises(ValueError, match="material"):
        draw_scene(rng, SIZE, PIXEL, "gold")
    with pytest.raises(ValueError, match="kind"):
        draw_scene(rng, SIZE, PIXEL, kind="crystal")


def test_random_scenes_are_physical_and_show_every_feature():
    seen = {"grains": 0, "holes": 0, "vacuum_edge": 0, "bilayer": 0, "contamination": 0, "vacancies": 0}
    for seed in range(60):
        material = ("graphene", "mos2", "srtio3")[seed % 3]
        scene = draw_scene(np.random.default_rng(seed), SIZE, PIXEL, material)
        info = scene.info
        nn = MATERIALS[material].nearest_neighbour
        present = scene.columns_yx_A[~scene.columns_vacant]
        # No two columns of one layer closer than 0.6 bonds (grain boundaries are cleaned), vacancies are sites
        # of the lattice and scatter nothing.
        if not info["bilayer"] and len(present) > 1:
            assert cKDTree(present).query(present, k=2)[0][:, 1].min() >= 0.6 * nn - 1e-9
        if scene.columns_vacant.any() and len(scene.z) and not info["bilayer"] and not info["contamination_atoms"]:
            d, _ = cKDTree(scene.atoms_yx_A).query(scene.vacant_yx_A)
            assert d.min() > 0.5 * nn
        assert len(scene.z) == columns_per_atom_count(scene) + info["contamination_atoms"]
        assert 0.0 <= info["material_fraction"] <= 1.0
        seen["grains"] += info["n_grains"] > 1
        seen["holes"] += info["holes"]
        seen["vacuum_edge"] += info["vacuum_edge"]
        seen["bilayer"] += info["bilayer"]
        seen["contamination"] += info["contamination_atoms"] > 0
        seen["vacancies"] += info["vacancies"] > 0
    assert all(count >= 3 for count in seen.values()), seen


def test_multi_vacancies_are_neighbouring_sites(monkeypatch):
    """With every vacancy grown, vacant sites come in clusters of 2-4 a bond apart."""
    ranges = scenes.SceneRanges(
        empty=0.0, holes=0.0, vacuum_edge=0.0, bilayer=0.0, contamination=0.0, multi_vacancy_fraction=1.0,
        vacancies_per_100nm2=(40.0, 40.0), grain_counts=(1,), grain_probabilities=(1.0,),
    )  # fmt: skip
    monkeypatch.setattr(scenes, "SCENE_RANGES", ranges)
    scene = draw_scene(np.random.default_rng(7), SIZE, PIXEL)
    vacant = scene.vacant_yx_A
    assert len(vacant) >= 10
    d = cKDTree(vacant).query(vacant, k=2)[0][:, 1]
    assert np.median(d) == pytest.approx(MATERIALS["graphene"].nearest_neighbour, rel=1e-6)


def test_same_generator_same_scene():
    a = draw_scene(np.random.default_rng(11), SIZE, PIXEL, "mos2")
    b = draw_scene(np.random.default_rng(11), SIZE, PIXEL, "mos2")
    np.testing.assert_array_equal(a.atoms_yx_A, b.atoms_yx_A)
    np.testing.assert_array_equal(a.columns_vacant, b.columns_vacant)
    assert a.info == b.info


def test_mixed_draws_every_material_and_a_named_one_draws_nothing_extra():
    drawn = [draw_scene(np.random.default_rng(s), 48, PIXEL, scenes.MIXED, kind="lattice") for s in range(30)]
    counts = {name: sum(d.material == name for d in drawn) for name in MATERIALS}
    assert all(n >= 4 for n in counts.values()), counts  # 30 uniform draws of 3: each at least 4 times
    for d in drawn:  # each scene is the material it names
        assert set(np.unique(d.columns_z)) <= {z for *_, stack in MATERIALS[d.material].basis for z in stack}
    # a named material takes no draw for the choice: its scene is the one the same seed gave before
    rng = np.random.default_rng(4)
    assert scenes.pick_material(rng, "mos2") == "mos2"
    assert rng.random() == np.random.default_rng(4).random()
    with pytest.raises(ValueError, match="mixed"):
        draw_scene(np.random.default_rng(0), 32, PIXEL, "cheese")


def test_smooth_fields_have_unit_variance_and_the_asked_correlation_length():
    corr = 16.0
    fields = scenes.smooth_fields(np.random.default_rng(2), 128, [corr] * 40)
    assert fields.shape == (40, 128, 128) and fields.dtype == np.float32
    assert 0.85 < fields.var(axis=(1, 2)).mean() + fields.mean(axis=(1, 2)).var() < 1.15
    for lag in (8, 16, 32):
        # a Gaussian kernel of sigma l gives the correlation exp(-d^2 / (4 l^2))
        measured = np.corrcoef(fields[:, :, :-lag].ravel(), fields[:, :, lag:].ravel())[0, 1]
        assert abs(measured - math.exp(-(lag**2) / (4 * corr**2))) < 0.06, lag
