"""Inference: a trained model on raw frames (:mod:`~emdenoise.inference.denoiser`), tiles
(:mod:`~emdenoise.inference.tiling`), pixel-size resampling (:mod:`~emdenoise.inference.resample`) and export to
ONNX/TorchScript (:mod:`~emdenoise.inference.export`)."""
