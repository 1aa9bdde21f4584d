"""``emdenoise bench``: training and inference speed of the models, against the original benchmark's loop.

    python -m emdenoise bench --models=sciml_ae --device=auto --output=bench.json

For each model and frame size it measures, after warm-up, training images/s and inference images/s (the
fastest of ``--repeats`` timed rounds: on a shared machine the slower rounds measure the neighbours), and
the peak memory, twice in the same run:

- **plain**: the loop as the original em_denoise benchmark wrote it: a torch DataLoader with 2 worker
  processes reading one image per ``__getitem__`` from an (N, S, S, 1) float32 HDF5 file (a temporary file
  of random images, contiguous layout as h5py writes by default), float32, NCHW, eager, pageable host
  memory and blocking copies to the GPU, ``loss.item()`` after every step;
- **fast**: the images in memory (on a GPU: training data resident in GPU memory; inference frames in pinned
  host memory, copied with non_blocking copies on their own CUDA streams, overlapping the computation, into
  preallocated buffers), channels_last, bf16 autocast where it helps (``runtime.resolve_precision``: on
  a GPU with bfloat16, and on a CPU only with native bfloat16), optional ``torch.compile`` (``--compile``,
  falling back to eager when it fails) and, on a GPU, CUDA graphs (falling back to eager when capture fails),
  preallocated inference output buffers.

Inference counts host-to-host frames: input in host memory, denoised output back in host memory. Training
uses random batches (indices drawn with replacement). The ablation, at the first size, adds one step at a time
(plain -> in_memory -> channels_last -> bf16 -> compile -> cuda_graphs) and says what each bought; steps
that do not apply (bf16 on a CPU without native bfloat16, compile when not asked for, CUDA graphs on a CPU)
are listed as skipped with the reason. The fast path is the fastest configuration the ablation measured
(a step that made things slower, e.g. torch.compile for sciml_ae training on a 2-core CPU, is left out of
it); its configuration is ``fast_config``, used as it is at the other sizes.

Batch size: ``--batch-size`` images per step at 256 x 256 (default 16 on a CPU, 256 on a GPU), scaled down
by the pixel count for larger frames (1024 x 1024: 1/16 of it, at least 1). Training is measured at
``--train-sizes`` (default: the smallest of ``--sizes``), inference at every size of ``--sizes``.

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the measurement (model, data and
activations); on a CPU the peak resident memory of this process above its level when the measurement
started, sampled every few milliseconds (the plain loop's worker processes are not included).

The JSON written to ``--output``::

    {"format": "emdenoise-bench/1", "emdenoise_version", "torch_version", "device", "device_name",
     "cpu_count", "torch_threads", "platform", "memory_method", "settings": {...},
     "models": {NAME: {"parameters", "train_speedup_vs_plain", "infer_speedup_vs_plain",
                       "train_images_per_s": {SIZE: x}, "plain_train_images_per_s": {SIZE: x},
                       "infer_images_per_s": {SIZE: x}, "plain_infer_images_per_s": {SIZE: x},
                       "train_speedup_vs_plain_by_size": {...}, "infer_speedup_vs_plain_by_size": {...},
                       "peak_memory_bytes": {"train": {SIZE: x}, "infer": {...}},
                       "plain_peak_memory_bytes": {"train": {...}, "infer": {...}},
                       "batch_size": {"train": {SIZE: b}, "infer": {...}},
                       "fast_config": {...}, "ablation": [{"step", "adds", "train_images_per_s",
                       "infer_images_per_s", "train_gain", "infer_gain"} or {"step", "adds", "skipped"}]}}}

``*_speedup_vs_plain`` (no suffix) are at the first (reference) size. Sizes are JSON keys as strings.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdenoise import __version__, models
from emdenoise.engine import runtime
from emdenoise.errors import EXIT_INTERRUPTED, EXIT_OK, EmdError, InputError
from emdenoise.outputs import write_json_atomic
from emdenoise.log import setup as setup_logging

FORMAT = "emdenoise-bench/1"
REFERENCE_SIDE = 256           # --batch-size is per 256 x 256 frames; larger frames get proportionally fewer
PLAIN_WORKERS = 2              # as the original benchmark's DataLoader
PLAIN_FILE_BYTES = 256 << 20   # cap on the temporary HDF5 file; items beyond it wrap around (page-cached)
LR = 1e-3
GRAPH_WARMUP = 3               # eager iterations on a side stream before a CUDA graph capture
RSS_SAMPLE_S = 0.005
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Config:
    """How the fast path runs the model; the ablation switches these on one at a time."""

    channels_last: bool = False
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    device: torch.device
    precision: str            # resolved: fp32, bf16 or fp16
    precision_requested: str
    batch_size: int           # at REFERENCE_SIDE
    steps: int
    warmup: int
    repeats: int
    sizes: tuple[int, ...]    # inference
    train_sizes: tuple[int, ...]
    compile: bool
    cuda_graphs: bool
    quick: bool

    def batch_for(self, side: int) -> int:
        if side <= REFERENCE_SIDE:
            return self.batch_size
        return max(1, self.batch_size * REFERENCE_SIDE ** 2 // side ** 2)


@dataclass(frozen=True)
class Timing:
    """``warmup`` untimed steps, then ``repeats`` timed rounds of ``steps`` steps; the fastest round counts
    (on a shared machine the others measure the neighbours as much as the code)."""

    warmup: int
    steps: int
    repeats: int

    @property
    def total(self) -> int:
        return self.warmup + self.steps * self.repeats


@dataclass
class Measure:
    images_per_s: float
    peak_memory_bytes: int
    images: int
    seconds: float


def _int_list(text: str, option: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise InputError.at("command line", option, f"expected comma-separated integers >= {minimum}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emdenoise bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sciml_ae", help="comma-separated model names, or all (default sciml_ae)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step at 256x256, scaled down by area for larger frames (default 16 on a "
                        "CPU, 256 on a GPU; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 GPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds of --steps steps; the fastest counts (default 3; 1 with --quick)")
    p.add_argument("--sizes", default="256,1024", help="inference frame sides (default 256,1024)")
    p.add_argument("--train-sizes", default=None, help="training frame sides (default: the smallest of --sizes)")
    p.add_argument("--precision", default="auto", choices=("auto",) + runtime.PRECISIONS,
                   help="fast path precision (auto: bf16 where it helps, see emdenoise.engine.runtime)")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (falls back to eager)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="do not use CUDA graphs on a GPU")
    p.add_argument("--quick", action="store_true", help="tiny run (batch 2, 2 steps, 1 warm-up) to check it works")
    p.add_argument("--output", default=None, metavar="FILE.json", help="write the results here (atomically)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    known = models.names()
    names = known if args.models.strip() == "all" else tuple(n.strip() for n in args.models.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InputError.at("command line", "--models", f"expected all or names from {', '.join(known)}, got "
                            f"{args.models!r}")
    try:
        device = runtime.resolve_device(args.device, "--device", "emdenoise bench")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        precision = runtime.resolve_precision(args.precision, device, "--precision", "emdenoise bench")
    except InputError as exc:
        raise InputError(exc.message.replace("parameters: ", "command line: ", 1)) from None
    gpu = device.type == "cuda"
    defaults = (2, 2, 1, 1) if args.quick else ((256, 50, 10, 3) if gpu else (16, 5, 2, 3))
    batch, steps, warmup, repeats = (v if v is not None else d for v, d in
                                     zip((args.batch_size, args.steps, args.warmup, args.repeats), defaults))
    for option, value, minimum in (("--batch-size", batch, 1), ("--steps", steps, 1), ("--warmup", warmup, 0),
                                   ("--repeats", repeats, 1)):
        if value < minimum:
            raise InputError.at("command line", option, f"expected an integer >= {minimum}, got {value}")
    sizes = _int_list(args.sizes, "--sizes", 16)
    train_sizes = _int_list(args.train_sizes, "--train-sizes", 16) if args.train_sizes else (min(sizes),)
    return Settings(tuple(names), device, precision, args.precision, batch, steps, warmup, repeats, sizes,
                    train_sizes,
                    args.compile, args.cuda_graphs and gpu, args.quick)


def ladder(settings: Settings) -> list[tuple[str, str, Config | None, str]]:
    """The ablation: (step, what it adds, cumulative config or None, why skipped), plain excluded."""
    gpu = settings.device.type == "cuda"
    steps: list[tuple[str, str, Config | None, str]] = []
    cfg = Config()
    steps.append(("in_memory", "images in memory, no per-item file reads or worker processes" +
                  ("; training data in GPU memory, inference frames pinned, non_blocking copies on their own "
                   "streams, cudnn.benchmark" if gpu else "") + "; preallocated output buffers", cfg, ""))
    cfg = replace(cfg, channels_last=True)
    steps.append(("channels_last", "channels_last memory format", cfg, ""))
    if settings.precision != "fp32":
        cfg = replace(cfg, precision=settings.precision)
        steps.append((settings.precision, f"{settings.precision} autocast", cfg, ""))
    else:
        reason = ("precision fp32 requested" if settings.precision_requested == "fp32" else
                  "precision auto chose fp32: this CPU has no native bfloat16 (emulated bf16 is much slower)")
        steps.append(("bf16", "bf16 autocast", None, reason))
    if settings.compile:
        cfg = replace(cfg, compile=True)
        steps.append(("compile", "torch.compile", cfg, ""))
    else:
        steps.append(("compile", "torch.compile", None, "not requested (--compile)"))
    if settings.cuda_graphs:
        cfg = replace(cfg, cuda_graphs=True)
        steps.append(("cuda_graphs", "whole-step CUDA graphs", cfg, ""))
    else:
        steps.append(("cuda_graphs", "whole-step CUDA graphs", None,
                      "GPU only" if not gpu else "turned off (--no-cuda-graphs)"))
    return steps


# ---------------------------------------------------------------------------------------------- measuring

class PeakMemory:
    """Peak memory over a ``with`` block: CUDA max_memory_allocated on a GPU; on a CPU the resident memory
    of this process above its level at the start, sampled in a thread (``/proc/self/statm``; elsewhere the
    growth of ru_maxrss)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

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

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = self._max = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(0, max(self._max, self._rss()) - self._base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, step: Callable[[int], None], timing: Timing, batch: int) -> Measure:
    """Run ``step(i)`` for i = 0 .. timing.total - 1: the warm-up, then the timed rounds; images/s of the
    fastest round, counting ``batch`` images a step."""
    with PeakMemory(device) as mem:
        for i in range(timing.warmup):
            step(i)
        _sync(device)
        best = math.inf
        for r in range(timing.repeats):
            t0 = time.perf_counter()
            first = timing.warmup + r * timing.steps
            for i in range(first, first + timing.steps):
                step(i)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return Measure(timing.steps * batch / best, mem.peak, timing.steps * batch, best)


def _autocast(device: torch.device, precision: str, graphs: bool) -> ContextManager:
    """Autocast for ``precision``; under CUDA graph capture without the weight-cast cache, as the CUDA graph
    documentation requires."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if not graphs:
        return runtime.autocast(device, precision)
    return torch.autocast(device.type, dtype=_AUTOCAST[precision], cache_enabled=False)


def _model(name: str, device: torch.device, cfg: Config | None) -> nn.Module:
    """A fresh, seeded model; ``cfg`` None: for the plain loop (which, as the original, leaves cuDNN's
    autotuner off)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = cfg is not None
    model = models.build(name).to(device)
    if cfg is not None and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _compiled(model: nn.Module, cfg: Config, inference: bool = False) -> nn.Module:
    """``model`` under torch.compile when ``cfg.compile``; for inference with inductor's freezing (weights as
    constants, folded and prepacked: about 1.3x over compile without it, sciml_ae inference on a 2-core CPU)."""
    if not cfg.compile:
        return model
    torch._dynamo.reset()  # fresh caches: no recompilation limit carried over from another model or size
    return torch.compile(model, options={"freezing": True} if inference else None)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- plain loop

class _PlainImages(torch.utils.data.Dataset):
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


def _nchw(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 1) -> (B, 1, S, S) with NCHW strides, as the original moves the channel axis after collation
    (with the axes in the right order). One channel: the same memory, so a reshape. (A permute would give
    strides that PyTorch reads as channels_last and would quietly run the plain loop channels_last.)"""
    return batch.reshape(batch.shape[0], 1, batch.shape[1], batch.shape[2])


def _plain_loader(paths: list[Path], batch: int, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_PlainImages(paths, batch * steps), batch_size=batch, shuffle=True,
                                       num_workers=PLAIN_WORKERS, drop_last=True)


def plain_train(name: str, noisy: Path, clean: Path, device: torch.device, batch: int,
                timing: Timing) -> Measure:
    model = _model(name, device, None).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batches = iter(_plain_loader([noisy, clean], batch, timing.total))

    def step(_: int) -> None:
        x, y = next(batches)
        x, y = _nchw(x).to(device), _nchw(y).to(device)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # the original logs the loss of every batch

    try:
        return _timed(device, step, timing, batch)
    finally:
        batches = None  # the loader's worker processes end now, not whenever the frame is collected


def plain_infer(name: str, noisy: Path, device: torch.device, batch: int, timing: Timing) -> Measure:
    model = _model(name, device, None).eval()
    batches = iter(_plain_loader([noisy], batch, timing.total))
    outputs: list[torch.Tensor] = []

    def step(_: int) -> None:
        with torch.no_grad():
            outputs.append(model(_nchw(next(batches)).to(device)).cpu())
        if len(outputs) > 4:
            outputs.pop(0)

    try:
        return _timed(device, step, timing, batch)
    finally:
        batches = None  # the loader's worker processes end now, not whenever the frame is collected


# ---------------------------------------------------------------------------------------------- fast path

def fast_train(name: str, noisy: torch.Tensor, clean: torch.Tensor, device: torch.device, cfg: Config,
               batch: int, timing: Timing) -> Measure:
    """Training steps on random batches of the in-memory pairs (N, 1, S, S) under ``cfg`` (on a GPU the
    pairs are moved into GPU memory first, and batches are gathered there)."""
    model = _model(name, device, cfg).train()
    net = _compiled(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=LR, capturable=cfg.cuda_graphs)
    noisy, clean = noisy.to(device), clean.to(device)
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(noisy), (timing.total, batch), generator=gen).to(device)
    current = index[0].clone()  # the batch's indices: a CUDA graph's static input

    def body() -> None:
        x = noisy.index_select(0, current).contiguous(memory_format=cfg.memory_format)
        y = clean.index_select(0, current).contiguous(memory_format=cfg.memory_format)
        with _autocast(device, cfg.precision, cfg.cuda_graphs):
            out = net(x)
        F.mse_loss(out.float(), y).backward()
        opt.step()

    if cfg.cuda_graphs:
        replay = _graphed(device, body, opt)

        def step(i: int) -> None:
            current.copy_(index[i])
            replay()
    else:
        def step(i: int) -> None:
            current.copy_(index[i])
            opt.zero_grad(set_to_none=True)
            body()

    return _timed(device, step, timing, batch)


def _graphed(device: torch.device, body: Callable[[], None], opt: torch.optim.Optimizer) -> Callable[[], None]:
    """Capture ``body`` (forward, backward, optimiser step) as one CUDA graph, after eager warm-up on a side
    stream as the CUDA graph documentation prescribes (whole-network capture, optimiser with
    ``capturable=True``); returns its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's memory pool
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def fast_infer(name: str, noisy: torch.Tensor, device: torch.device, cfg: Config, batch: int,
               timing: Timing) -> Measure:
    """Denoise consecutive batches of the in-memory frames (N, 1, S, S), N a multiple of ``batch``, into a
    preallocated host output, under ``cfg``."""
    model = _model(name, device, cfg).eval()
    net = _compiled(model, cfg, inference=True)
    if device.type == "cuda":
        return _fast_infer_cuda(net, noisy, device, cfg, batch, timing)
    out = torch.empty_like(noisy)

    def step(i: int) -> None:
        rows = slice(i * batch % len(noisy), i * batch % len(noisy) + batch)
        with torch.inference_mode(), _autocast(device, cfg.precision, False):
            out[rows].copy_(net(noisy[rows].contiguous(memory_format=cfg.memory_format)))

    return _timed(device, step, timing, batch)


def _fast_infer_cuda(net: nn.Module, noisy: torch.Tensor, device: torch.device, cfg: Config, batch: int,
                     timing: Timing) -> Measure:
    """Host-to-host inference on a GPU: two buffer slots, so that copying batch k+1 in and batch k-1 out
    (own streams, pinned host memory) overlaps the computation of batch k; each slot's forward pass is a
    CUDA graph when ``cfg.cuda_graphs``, else eager into a preallocated output."""
    host_in = noisy.pin_memory()
    host_out = torch.empty(noisy.shape, dtype=noisy.dtype, pin_memory=True)
    slots = 2
    shape = (batch,) + tuple(noisy.shape[1:])
    x = [torch.empty(shape, device=device).contiguous(memory_format=cfg.memory_format) for _ in range(slots)]
    y = [torch.empty(shape, device=device) for _ in range(slots)]

    def forward(i: int) -> torch.Tensor:
        with torch.no_grad(), _autocast(device, cfg.precision, cfg.cuda_graphs):
            return net(x[i]).float()

    if cfg.cuda_graphs:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for i in range(slots):
                for _ in range(GRAPH_WARMUP):
                    forward(i)
        torch.cuda.current_stream(device).wait_stream(side)
        graphs = []
        for i in range(slots):
            graphs.append(torch.cuda.CUDAGraph())
            with torch.cuda.graph(graphs[i]):
                y[i] = forward(i)
        run = [g.replay for g in graphs]
    else:
        run = [lambda i=i: y[i].copy_(forward(i)) for i in range(slots)]

    copy_in, compute, copy_out = (torch.cuda.Stream(device) for _ in range(3))
    loaded, computed, emptied = ([torch.cuda.Event() for _ in range(slots)] for _ in range(3))

    def step(k: int) -> None:
        i = k % slots
        begin = k * batch % len(host_in)
        rows = slice(begin, begin + batch)
        with torch.cuda.stream(copy_in):
            copy_in.wait_event(computed[i])        # batch k - slots has finished reading x[i]
            x[i].copy_(host_in[rows], non_blocking=True)
            loaded[i].record(copy_in)
        with torch.cuda.stream(compute):
            compute.wait_event(loaded[i])
            compute.wait_event(emptied[i])         # batch k - slots has been copied out of y[i]
            run[i]()
            computed[i].record(compute)
        with torch.cuda.stream(copy_out):
            copy_out.wait_event(computed[i])
            host_out[rows].copy_(y[i], non_blocking=True)
            emptied[i].record(copy_out)

    return _timed(device, step, timing, batch)


# ---------------------------------------------------------------------------------------------- one model

def _write_images(path: Path, images: np.ndarray) -> None:
    """(N, S, S) -> dataset "images" (N, S, S, 1) float32, channels last, as the original files."""
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=images[..., None])


def _pairs(side: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 frames: the content does not change the speed."""
    rng = np.random.default_rng(seed)
    clean = rng.random((n, side, side), dtype=np.float32)
    noisy = clean + rng.normal(0.0, 0.1, clean.shape).astype(np.float32)
    return noisy, clean


def _rows(side: int, batch: int, needed: int) -> int:
    """Frames to generate: enough for every step, capped by PLAIN_FILE_BYTES, a multiple of the batch."""
    cap = max(batch, PLAIN_FILE_BYTES // (side * side * 4))
    return max(batch, min(needed, cap) // batch * batch)


def _measure_with_fallback(run: Callable[[Config], Measure], cfg: Config, log) -> tuple[Measure, Config, str]:
    """``run(cfg)``; when it fails with CUDA graphs or torch.compile on, again without them (graphs first).
    Returns (measure, the config that ran, the failure or "")."""
    try:
        return run(cfg), cfg, ""
    except Exception as exc:  # compile and capture failures come in many types
        if not (cfg.cuda_graphs or cfg.compile):
            raise
        what = "cuda_graphs" if cfg.cuda_graphs else "compile"
        text = str(exc).strip()
        reason = f"{what} failed: {type(exc).__name__}" + (f": {text.splitlines()[0][:200]}" if text else "")
        log.warning("bench: %s; measuring without it", reason)
    _release(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    measure, used, more = _measure_with_fallback(run, replace(cfg, **{what: False}), log)
    return measure, used, "; ".join(r for r in (reason, more) if r)


def _ablation(settings: Settings) -> list[dict]:
    """The ablation rows, plain first; each later row holds its cumulative config (None: skipped)."""
    rows = [{"step": "plain", "adds": f"the original loop: one HDF5 read per image, DataLoader with "
             f"{PLAIN_WORKERS} workers, float32, NCHW, eager", "config": None}]
    for step, adds, cfg, skipped in ladder(settings):
        rows.append({"step": step, "adds": adds, "config": cfg, **({"skipped": skipped} if skipped else {})})
    return rows


def _run_ablation(rows: list[dict], kind: str, plain: Measure, run: Callable[[Config], Measure],
                  log, label: str) -> tuple[Measure, Config]:
    """Measure every row of the ablation for ``kind``; a compile or graphs step that fails is recorded and
    left out of the later steps. Returns the fastest measurement (the fast path) and its config."""
    rows[0][f"{kind}_images_per_s"] = plain.images_per_s
    dropped: dict[str, bool] = {}
    fast, best, last = None, None, None
    for row in rows[1:]:
        if row["config"] is None:
            continue
        cfg = replace(row["config"], **dropped)
        if cfg == last:  # this step's feature failed before: nothing new to measure
            row[f"{kind}_failed"] = "not applied: failed at an earlier step"
            continue
        log.info("%s: %s", label, row["step"])
        try:
            measure, last = run(cfg), cfg
        except Exception as exc:
            if row["step"] not in ("compile", "cuda_graphs"):
                raise
            text = str(exc).strip()
            row[f"{kind}_failed"] = f"{type(exc).__name__}" + (f": {text.splitlines()[0][:200]}" if text else "")
            log.warning("bench %s: %s failed (%s); the later steps go without it", label, row["step"],
                        row[f"{kind}_failed"])
            dropped[row["step"]] = False
            _release(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
            continue
        row[f"{kind}_images_per_s"] = measure.images_per_s
        if fast is None or measure.images_per_s > fast.images_per_s:
            fast, best = measure, cfg
        _release(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    assert fast is not None and best is not None  # in_memory is always measured
    return fast, best


def _finish_ablation(rows: list[dict]) -> list[dict]:
    """JSON rows: gains relative to the previous measured step, configs left out."""
    out, previous = [], {}
    for row in rows:
        row = {k: v for k, v in row.items() if k != "config"}
        for kind in ("train", "infer"):
            value = row.get(f"{kind}_images_per_s")
            if value is None:
                continue
            if kind in previous:
                row[f"{kind}_gain"] = value / previous[kind]
            previous[kind] = value
        out.append(row)
    return out


def bench_model(name: str, settings: Settings, tmp: Path, log) -> dict:
    """All measurements of one model: plain and fast per size, the ablation at the reference sizes."""
    device = settings.device
    timing = Timing(settings.warmup, settings.steps, settings.repeats)
    result: dict = {"parameters": models.count_parameters(models.build(name)), "fast_config": {}}
    for field in ("train_images_per_s", "plain_train_images_per_s", "infer_images_per_s",
                  "plain_infer_images_per_s", "train_speedup_vs_plain_by_size", "infer_speedup_vs_plain_by_size"):
        result[field] = {}
    for field in ("peak_memory_bytes", "plain_peak_memory_bytes", "batch_size"):
        result[field] = {"train": {}, "infer": {}}
    result["fallbacks"] = []
    rows = _ablation(settings)
    reference = {"train": settings.train_sizes[0], "infer": settings.sizes[0]}
    fast_cfg = {}
    # the reference sizes first: their ablation decides the fast configuration used at the other sizes
    for side in sorted(set(settings.sizes) | set(settings.train_sizes),
                       key=lambda side: (side not in reference.values(), side)):
        batch = settings.batch_for(side)
        noisy_np, clean_np = _pairs(side, _rows(side, batch, batch * timing.total), seed=side)
        paths = {"noisy": tmp / f"graphene_img_noise_{side}.h5", "clean": tmp / f"graphene_img_clean_{side}.h5"}
        _write_images(paths["noisy"], noisy_np)
        _write_images(paths["clean"], clean_np)
        noisy, clean = torch.from_numpy(noisy_np)[:, None], torch.from_numpy(clean_np)[:, None]
        for kind, sizes in (("train", settings.train_sizes), ("infer", settings.sizes)):
            if side not in sizes:
                continue
            label = f"{name} {kind} {side}x{side}"
            log.info("%s: plain loop (batch %d)", label, batch)
            if kind == "train":
                plain = plain_train(name, paths["noisy"], paths["clean"], device, batch, timing)
                run = lambda c: fast_train(name, noisy, clean, device, c, batch, timing)  # noqa: E731
            else:
                plain = plain_infer(name, paths["noisy"], device, batch, timing)
                run = lambda c: fast_infer(name, noisy, device, c, batch, timing)  # noqa: E731
            _release(device)
            if side == reference[kind]:
                fast, fast_cfg[kind] = _run_ablation(rows, kind, plain, run, log, label)
            else:
                log.info("%s: fast path", label)
                fast, _, failure = _measure_with_fallback(run, fast_cfg[kind], log)
                if failure:
                    result["fallbacks"].append(f"{kind} {side}: {failure}")
                _release(device)
            key = str(side)
            result[f"{kind}_images_per_s"][key] = fast.images_per_s
            result[f"plain_{kind}_images_per_s"][key] = plain.images_per_s
            result[f"{kind}_speedup_vs_plain_by_size"][key] = fast.images_per_s / plain.images_per_s
            result["peak_memory_bytes"][kind][key] = fast.peak_memory_bytes
            result["plain_peak_memory_bytes"][kind][key] = plain.peak_memory_bytes
            result["batch_size"][kind][key] = batch
        for path in paths.values():
            path.unlink()
    for kind in ("train", "infer"):
        result[f"{kind}_speedup_vs_plain"] = result[f"{kind}_speedup_vs_plain_by_size"][str(reference[kind])]
    result["fast_config"] = {kind: asdict(cfg) for kind, cfg in fast_cfg.items()}
    result["ablation"] = _finish_ablation(rows)
    return result


# ---------------------------------------------------------------------------------------------- the command

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(settings: Settings, log) -> dict:
    """Every model's measurements plus the machine and settings, as the JSON document."""
    if settings.device.type == "cuda":
        torch.cuda.set_device(settings.device)
    doc = {"format": FORMAT, "emdenoise_version": __version__, "torch_version": torch.__version__,
           "device": str(settings.device), "device_name": device_name(settings.device),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "python": platform.python_version(),
           "memory_method": ("torch.cuda.max_memory_allocated" if settings.device.type == "cuda" else
                             "peak resident memory of the main process above its level at the start of the "
                             "measurement (loader workers not included)"),
           "settings": {**{k: v for k, v in asdict(settings).items() if k != "device"},
                        "plain_workers": PLAIN_WORKERS, "reference_side": REFERENCE_SIDE,
                        "learning_rate": LR},
           "models": {}}
    with tempfile.TemporaryDirectory(prefix="emdenoise-bench-") as tmp:
        for name in settings.models:
            doc["models"][name] = bench_model(name, settings, Path(tmp), log)
    return doc


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(doc: dict) -> str:
    """A plain-text summary: one line per model, task and size, then each model's ablation."""
    s = doc["settings"]
    lines = [f"emdenoise bench: {doc['device']} ({doc['device_name']}, {doc['cpu_count']} CPUs, "
             f"{doc['torch_threads']} threads), torch {doc['torch_version']}, {s['precision']}, "
             f"best of {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up",
             f"{'model':<10} {'task':<6} {'size':>5} {'batch':>6} {'plain img/s':>12} {'fast img/s':>11} "
             f"{'speedup':>8} {'peak MB':>8}"]
    for name, m in doc["models"].items():
        for kind in ("train", "infer"):
            for size, fast in m[f"{kind}_images_per_s"].items():
                lines.append(f"{name:<10} {kind:<6} {size:>5} {m['batch_size'][kind][size]:>6} "
                             f"{_fmt(m[f'plain_{kind}_images_per_s'][size]):>12} {_fmt(fast):>11} "
                             f"{m[f'{kind}_speedup_vs_plain_by_size'][size]:>7.2f}x "
                             f"{m['peak_memory_bytes'][kind][size] / 2**20:>8.0f}")
    for name, m in doc["models"].items():
        lines.append(f"ablation {name} (train {s['train_sizes'][0]}, infer {s['sizes'][0]}): "
                     "step, train img/s (gain), infer img/s (gain); * the fast path")
        for row in m["ablation"]:
            if "skipped" in row:
                lines.append(f"  {row['step']:<14} skipped: {row['skipped']}")
                continue
            cells = []
            for kind in ("train", "infer"):
                value, gain = row.get(f"{kind}_images_per_s"), row.get(f"{kind}_gain")
                failed = row.get(f"{kind}_failed")
                reference = str(s["train_sizes"][0] if kind == "train" else s["sizes"][0])
                chosen = row["step"] != "plain" and value == m[f"{kind}_images_per_s"][reference]
                cells.append(f"failed ({failed})" if failed else
                             f"{_fmt(value):>8}" + (f" ({gain:.2f}x)" if gain else "        ") +
                             ("*" if chosen else " "))
            lines.append(f"  {row['step']:<14} {cells[0]:<20} {cells[1]}")
        for item in m["fallbacks"]:
            lines.append(f"  fallback: {item}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``emdenoise bench ...``: measure, print the table, write the JSON; exit codes as the tasks'."""
    args = build_parser().parse_args(argv)
    log = setup_logging("bench", None)
    try:
        settings = settings_from_args(args)
        log.info("emdenoise %s: bench %s on %s (%s), batch %d at %dx%d, best of %d x %d steps after %d warm-up",
                 __version__, ",".join(settings.models), settings.device, settings.precision, settings.batch_size,
                 REFERENCE_SIDE, REFERENCE_SIDE, settings.repeats, settings.steps, settings.warmup)
        doc = run_bench(settings, log)
        if args.output:
            write_json_atomic(args.output, doc)
    except EmdError as exc:
        log.error("error: %s", exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("error: interrupted")
        return EXIT_INTERRUPTED
    print(table(doc))
    if args.output:
        log.info("results: %s", args.output)
    return EXIT_OK
