"""Fixtures of the report tests: made-up metrics in the shape the engines write them."""

import pytest


@pytest.fixture
def test_metrics() -> dict:
    """A ``test_metrics.json`` structure: the input, one tuned filter, one model, two dose bins."""

    def row(kind, psnr, params=None):
        return {
            "kind": kind,
            "psnr_mean": psnr,
            "psnr_std": 1.0,
            "ssim_mean": 0.5,
            "ssim_std": 0.1,
            "mse_mean": 1e-3,
            "images_per_s": None if kind == "input" else 50.0,
            "seconds_per_image": 0.0 if kind == "input" else 0.02,
            "params": params or {},
        }

    return {
        "n_images": 4,
        "data_range": 2.5,
        "data_range_definition": "max - min of the clean test set",
        "device": "cpu",
        "precision": "fp32",
        "methods": {
            "noisy": row("input", 10.0),
            "gaussian": row("classical", 20.0, {"sigma": 1.5, "gain": 0.9, "offset": 0.1}),
            "unet": row("deep", 25.0, {"model": "unet", "parameters": 1234}),
        },
        "psnr_by_dose": {
            "bins": [{"dose_min": 5.0, "dose_max": 20.0, "n": 2}, {"dose_min": 50.0, "dose_max": 200.0, "n": 2}],
            "methods": {"noisy": [8.0, 12.0], "gaussian": [19.0, 21.0], "unet": [24.0, None]},
        },
    }
