"""Where code runs: device and precision (:mod:`~emdenoise.runtime.device`), several processes under torchrun
(:mod:`~emdenoise.runtime.distributed`)."""

# The precisions :mod:`~emdenoise.runtime.device` implements, here where the parameters schema can read them
# without importing torch.
PRECISIONS = ("fp32", "bf16", "fp16")
