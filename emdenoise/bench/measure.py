"""Timing and peak memory, and the original benchmark's data path (the plain loop's), shared by the training
(:mod:`~emdenoise.bench.training`) and inference (:mod:`~emdenoise.bench.inference`) measurements."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import torch

from emdenoise import models
from emdenoise.bench.settings import Measure, Settings

PLAIN_WORKERS = 2  # as the original benchmark's DataLoader
RSS_SAMPLE_S = 0.005


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA max_memory_allocated on a GPU; on a CPU the resident memory
    of this process above its level at the start, sampled in a thread (``/proc/self/statm``; elsewhere the
    growth of ru_maxrss)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._base = self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            import resource  # not on Windows; ru_maxrss is in KiB on Linux

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._max = max(self._max, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = self._max = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(0, max(self._max, self._rss()) - self._base)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def best_of(
    device: torch.device, warm_up: Callable[[], object], round_: Callable[[int], float], repeats: int
) -> Measure:
    """``warm_up()``, then ``repeats`` timed rounds, each returning its images/s; the fastest counts (on a
    shared machine the others measure the neighbours as much as the code)."""
    with PeakMemory(device) as mem:
        warm_up()
        sync(device)
        best = max(round_(r) for r in range(repeats))
    return Measure(best, mem.peak)


def timed_steps(device: torch.device, step: Callable[[], object], steps: int, images: int) -> float:
    """Images/s of ``steps`` calls of ``step``, each on ``images`` images."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * images / (time.perf_counter() - t0)


class PlainImages(torch.utils.data.Dataset):
    """The original's data path: one HDF5 read per item, returned as the (S, S, 1) float32 array h5py gives
    (the DataLoader collates them into (B, S, S, 1) tensors); ``length`` items wrap around the file's rows.
    Each worker opens the files itself on first use."""

    def __init__(self, paths: list[Path], length: int):
        self.paths, self.length = paths, length
        self._files: list | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if self._files is None:
            self._files = [h5py.File(p, "r")["images"] for p in self.paths]
        items = [ds[i % len(ds)] for ds in self._files]
        return items[0] if len(items) == 1 else tuple(items)


def nchw(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 1) -> (B, 1, S, S) with NCHW strides, as the original moves the channel axis after collation
    (with the axes in the right order). One channel: the same memory, so a reshape. (A permute would give
    strides that PyTorch reads as channels_last and would quietly run the plain loop channels_last.)"""
    return batch.reshape(batch.shape[0], 1, batch.shape[1], batch.shape[2])


def plain_loader(paths: list[Path], batch: int, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        PlainImages(paths, batch * steps), batch_size=batch, shuffle=True, num_workers=PLAIN_WORKERS, drop_last=True
    )


def plain_model(name: str, device: torch.device, train: bool) -> torch.nn.Module:
    """A fresh seeded model, as the original builds it (cuDNN's autotuner left off)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    return models.build(name).to(device).train(train)


def time_plain(device: torch.device, step: Callable[[], None], batch: int, settings: Settings, loader: list) -> Measure:
    """Best of ``settings.repeats`` rounds of the plain loop's ``step`` (after a warm-up), then the loader's
    worker processes end now, not whenever the frame is collected."""
    try:
        return best_of(
            device,
            lambda: [timed_steps(device, step, settings.warmup, batch)],
            lambda _: timed_steps(device, step, settings.steps, batch),
            settings.repeats,
        )
    finally:
        loader.clear()
