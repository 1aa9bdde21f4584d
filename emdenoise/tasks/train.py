"""The ``train`` task: train one or more denoisers on the processed train split, validating on val each epoch.

For each model M of ``train.model`` (``all``: every registered model) it writes, under ``model_dir/M/``:

- ``em_denoise_model.h5``: the BEST weights by mean validation PSNR (``train.select_by``: or band PSNR; the
  last epoch's when val is empty; the averaged weights with ``train.ema``),
  a real HDF5 model file (:mod:`emdenoise.io.modelfile`) whose attributes hold the model name and options, the
  dataset normalisation, the training configuration, the package version and the metrics of those weights;
- ``em_denoise_model_last.h5``: the weights after the last epoch, same format;
- ``checkpoint_last.h5``: the resumable state after the latest finished epoch (weights, optimiser, schedule,
  random states, metrics so far), rewritten atomically every epoch.

and ``output_dir/train_metrics.json``::

    {"model": ..., "device": ..., "precision": ..., "parameters": ..., "epochs": [...], ...,   # the last model
     "models": {M: {"model", "device", "precision", "parameters", "options", "fingerprint", "n_train", "n_val",
                    "epochs": [{"epoch", "train_loss", "val_psnr", "val_ssim", "val_band_psnr", "val_loss",
                                "val_deviation", "steps", "images_per_s", "seconds", "lr"}],
                    "best_epoch", "best_val_psnr", "complete", "processes", "best_val_loss", "select_by",
                    "best_val_band_psnr", "format"}}}

each model's entry a :class:`~emdenoise.training.record.TrainRecord` (``format``: ``emdenoise-train-record/1``).

``train_loss`` is the mean loss over the epoch's training images (on normalised images); ``val_psnr`` and
``val_ssim`` are means over the val images of per-image PSNR/SSIM in raw units with the dataset card's fixed
``data_range``, ``val_band_psnr`` the same for the lattice-band PSNR (the test's band); ``steps`` counts the
optimiser steps since the start of the run (learning curves); ``images_per_s`` counts training images over the
training part of the epoch only; ``seconds`` is the whole epoch, validation included; ``lr`` is the learning rate
of the epoch's first step.

Only the checkpoint is written while training. The two model files are written into the hidden staging
folder ``model_dir/M/.staging/`` as training goes (the best weights whenever validation improves) and moved
into place, with ``train_metrics.json``, only when every model of the run has finished: a run that fails (a
model diverges, bad input, disk full, killed) leaves the model files and the metrics of earlier runs as they
were, and the same command again finishes the job (:func:`publish`).

Resuming (``resume: auto``): a checkpoint whose configuration fingerprint matches continues from the next
epoch and ends where an uninterrupted run would (shuffling and crops come from a generator seeded by
(seed, epoch); the global random states are restored as well), with the staged files of the run that wrote
it. A checkpoint of another configuration is refused; ``resume: never`` starts afresh (its first epoch
replaces the checkpoint). A finished run is not redone; its staged files, if any are left, are moved into
place.

The training itself is :mod:`emdenoise.training.loop` (the same train step ``emdenoise bench`` times).

Several processes (``torchrun --nproc_per_node=K -m emdenoise train ...``, see :mod:`emdenoise.runtime.distributed`):
every process draws the same seeded batch plan, takes its share of each global batch of ``batch_size``
images (which must divide evenly by K) and DistributedDataParallel averages the gradients, each process's
loss weighted by its share so that a step is the step one process would take on the whole batch. Validation
is split over the processes and summed. Only rank 0 logs and writes checkpoints, model files and metrics;
every process reads the checkpoint when resuming. Records gain ``processes`` (K; 1 for a single process).
"""

from __future__ import annotations

from emdenoise.data.card import read_card
from emdenoise.runtime import distributed
from emdenoise.runtime.context import Runtime
from emdenoise.runtime.task import TaskContext
from emdenoise.training.loop import METRICS_FILE, load_data, publish, train_model


def run(ctx: TaskContext) -> None:
    train = ctx.params.train
    data_dir = ctx.paths["data_dir"]
    card = read_card(data_dir)  # checked: data_range > 0, normalisation std > 0
    names = train.model_names()
    world = distributed.from_env()
    if train.batch_size % world.size:
        raise train.error(
            "batch_size",
            f"expected a multiple of the {world.size} training processes (the global "
            f"batch is split evenly among them), got {train.batch_size}",
        )
    rt = Runtime.resolve(train.device, train.precision, "train", ctx.where, ctx.log, world)
    data = load_data(data_dir, train, card.normalisation, ctx.where, card)
    device, created = distributed.start(world, rt.device)
    rt = rt.on(device)
    try:
        ctx.log.info(
            "training %s on %s (%s%s): %d train and %d val images of %dx%d, %d epochs, batch %d%s; targets: %s",
            ", ".join(names),
            device,
            rt.precision,
            ", torch.compile" if train.compile else "",
            len(data),
            len(data.val),
            *data.noisy.shape[-2:],
            train.epochs,
            train.batch_size,
            f" ({world.size} processes, {train.batch_size // world.size} images each)" if world.enabled else "",
            ", ".join(f"{k} {v}" for k, v in data.supervision.items()),
        )
        metrics_path = ctx.paths["output_dir"] / METRICS_FILE
        records = {name: train_model(name, train, data, card, rt, ctx.paths["model_dir"] / name) for name in names}
        if world.is_main:
            publish(records, ctx.paths["model_dir"], metrics_path)
        ctx.log.info("metrics: %s", metrics_path)
    finally:
        distributed.stop(created)
