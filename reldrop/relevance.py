"""LRP relevance of a batch for its true (or predicted) class, through zennit.

Relevance is zennit's ``Gradient`` attribution with the output seeded by the one-hot target,
summed over channels and kept signed (Grüne et al. 2025, arXiv 2505.21595). The call is safe
to make from anywhere in a training loop: the model is put in eval mode for the attribution and
every module's mode is restored afterwards, it works under a caller's ``torch.no_grad()``, and
parameters and buffers are left bitwise unchanged (canonizers merge BatchNorm in place only
while the composite is registered).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypedDict, Unpack

import torch
from torch import nn
from zennit.attribution import Gradient

from reldrop.composites import Bounds, make_composite

__all__ = ["TARGETS", "LRPOptions", "attribution", "check_inputs", "eval_mode", "relevance"]

TARGETS = ("label", "predicted")
Target = Literal["label", "predicted"]


class LRPOptions(TypedDict, total=False):
    """The keyword options of :func:`attribution` and :func:`relevance`.

    ``composite``: a name of :data:`reldrop.composites.COMPOSITES` (default ``"reference"``);
    ``target``: explain the ``"label"`` (default; ``targets`` required) or the ``"predicted"``
    class; ``bounds``: the (low, high) range of the normalised inputs for box rules (default:
    the batch's min and max).
    """

    composite: str
    target: Target
    bounds: Bounds | None


def _options(options: LRPOptions) -> tuple[str, Target, Bounds | None]:
    unknown = sorted(set(options) - set(LRPOptions.__annotations__))
    if unknown:
        raise TypeError(f"unknown LRP option(s) {unknown}; known: {sorted(LRPOptions.__annotations__)}")
    return (options.get("composite", "reference"), options.get("target", "label"),
            options.get("bounds"))


def check_inputs(inputs: torch.Tensor, name: str = "inputs") -> str:
    """Return ``"image"`` for N x C x H x W or ``"points"`` for N x P x C float tensors."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.ndim == 4:
        return "image"
    if inputs.ndim == 3:
        return "points"
    raise ValueError(
        f"{name} has shape {tuple(inputs.shape)}; expected images N x C x H x W (rank 4) "
        "or point clouds N x P x C (rank 3)"
    )


def _check_targets(targets: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    """Class indices of shape (n,), in [0, num_classes) when ``num_classes`` is known."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.ndim != 1 or targets.shape[0] != n:
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected ({n},)")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if num_classes is None or not n:
        return
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(
            f"targets must lie in [0, {num_classes}) for a model with {num_classes} outputs; "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode, restoring each module's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def attribution(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    create_graph: bool = False,
    **options: Unpack[LRPOptions],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input-element LRP attribution (same shape as ``inputs``) and the model's logits
    (``options``: :class:`LRPOptions`).

    ``create_graph=True`` keeps the graph so the attribution can itself be trained on
    (differentiable LRP, as the ISNet heatmap loss needs); the model's mode is then left alone.
    """
    composite, target, bounds = _options(options)
    check_inputs(inputs)
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; expected one of {TARGETS}")
    if target == "label" and targets is None:
        raise ValueError("targets is required when target='label'")
    if targets is not None:
        _check_targets(targets, inputs.shape[0])
        targets = targets.to(inputs.device)
    if bounds is None:
        bounds = (float(inputs.min()), float(inputs.max()))
    comp = make_composite(composite, model, bounds)

    def seed(output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 2:
            raise ValueError(f"model output has shape {tuple(output.shape)}; expected N x classes")
        if target == "predicted":
            index = output.argmax(dim=1)
        else:
            assert targets is not None
            _check_targets(targets, output.shape[0], output.shape[1])
            index = targets
        return torch.nn.functional.one_hot(index, output.shape[1]).to(output.dtype)

    x = inputs if create_graph else inputs.detach().clone()
    if not create_graph:
        x.requires_grad_(True)
    with torch.enable_grad():
        if create_graph:
            with Gradient(model=model, composite=comp, create_graph=True) as attributor:
                logits, attr = attributor(x, seed)
        else:
            with eval_mode(model), Gradient(model=model, composite=comp) as attributor:
                logits, attr = attributor(x, seed)
    if not create_graph:
        attr, logits = attr.detach(), logits.detach()
    return attr, logits


def relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    **options: Unpack[LRPOptions],
) -> torch.Tensor:
    """Signed LRP relevance summed over channels: N x H x W for images, N x P for point clouds
    (``options``: :class:`LRPOptions`, e.g. ``composite="epsilon_plus_flat"``)."""
    kind = check_inputs(inputs)
    attr, _ = attribution(model, inputs, targets, **options)
    return attr.sum(dim=1) if kind == "image" else attr.sum(dim=2)
