"""In-process measurements: a bare zennit relevance loop and a plain training step.

These are the references the pipeline is compared against: the same model, batch and threads,
with no Ray, no data loading and nothing else competing inside the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from reldrop.checkpoint import ModelSpec
from reldrop.relevance import relevance

__all__ = ["bare_relevance", "train_steps", "torch_threads"]


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _inputs(spec: ModelSpec, batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, spec.in_channels, size, size), dtype=torch.uint8, generator=gen)
    x = spec.normalization.to_model(images).to(device)
    y = torch.randint(0, spec.num_classes, (batch,), generator=gen).to(device)
    return x, y


def _timed(fn: Callable[[], Any], *, iters: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bare_relevance(
    spec: ModelSpec, *, batch: int, threads: int, size: int = 28, iters: int = 20, warmup: int = 3,
    composite: str = "reference", device: str = "cpu",
) -> dict[str, Any]:
    """Samples/s of ``reldrop.relevance.relevance`` called in a plain loop (the reference)."""
    dev = torch.device(device)
    with torch_threads(threads):
        model = spec.build().to(dev).eval()
        x, y = _inputs(spec, batch, size, dev)
        bounds = spec.normalization.bounds()
        times = _timed(
            lambda: relevance(model, x, y, composite=composite, bounds=bounds),
            iters=iters, warmup=warmup, device=dev,
        )
    total = sum(times)
    return {
        "batch": batch, "threads": threads, "iters": iters, "device": device,
        "samples_per_s": batch * iters / total, "s_per_batch_median": sorted(times)[len(times) // 2],
    }


def train_steps(
    spec: ModelSpec, *, batch: int, threads: int, size: int = 28, iters: int = 20, warmup: int = 3,
    augment: str = "none", device: str = "cpu", lr: float = 0.05,
) -> dict[str, Any]:
    """Seconds per training step: the trainer's own step (:func:`~reldrop.pipeline.training.step.
    train_step`, plain CE, the default SGD), with in-loop RelDrop first when ``augment`` is not
    ``"none"`` (the ``sync`` mode)."""
    from reldrop.augment import RelDrop
    from reldrop.optimizers import make_optimizer
    from reldrop.pipeline.training.step import train_step
    from reldrop.regularizers import make_regularizer

    dev = torch.device(device)
    with torch_threads(threads):
        torch.manual_seed(0)
        model = spec.build().to(dev).train()
        optimizer = make_optimizer("sgd", model.parameters(), lr=lr)
        regularizer = make_regularizer("none", lam=None)
        in_loop = RelDrop(model, augment, bounds=spec.normalization.bounds(), seed=0) if augment != "none" else None
        x, y = _inputs(spec, batch, size, dev)

        def step() -> None:
            inputs = in_loop(x, y).inputs if in_loop is not None else x
            train_step(model, optimizer, regularizer, inputs, y, None, placeholder=inputs[:1])

        times = _timed(step, iters=iters, warmup=warmup, device=dev)
    return {
        "batch": batch, "threads": threads, "iters": iters, "device": device, "augment": augment,
        "s_per_step_mean": sum(times) / len(times), "s_per_step_median": sorted(times)[len(times) // 2],
    }
