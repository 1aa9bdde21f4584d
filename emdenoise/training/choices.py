"""The names of the training choices, in a module that imports nothing: the parameters schema
(:mod:`emdenoise.config.params`) offers exactly these, and the training code implements each of them
(:func:`emdenoise.training.optim.make_optimizer`, :func:`~emdenoise.training.optim.lr_factor`,
:func:`~emdenoise.training.optim.make_loss`, :class:`emdenoise.training.supervision.Supervisor`; a test checks
that every name here is implemented there)."""

SUPERVISIONS = ("clean", "noise2void", "poisson_split", "frame_pairs")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("mse", "l1")
SELECT_BY = ("psnr", "band_psnr")  # the val measure that picks the best epoch
AUGMENTS = ("none", "dihedral")  # random symmetries of the square applied to each training crop
# train.condition: what the model sees of the noisy frame (emdenoise.models.conditioning)
CONDITIONS = ("none", "flatfield", "anscombe", "noise_level", "flatfield+noise_level", "wiener_prior")
# input channels a condition gives the model (1 when not named): a model that takes them (emdenoise.models.multichannel)
CONDITION_CHANNELS = {"wiener_prior": 2}
# conditions whose input estimates the flat-illuminated clean image: clean targets only (noisy ones keep the beam)
CLEAN_ONLY_CONDITIONS = ("flatfield", "flatfield+noise_level", "wiener_prior")
