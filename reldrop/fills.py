"""What an occluded input element is replaced with, defined in the space the model sees.

``zero`` writes 0, which after normalisation is the dataset mean (the reference code instead
wrote the mean into an already-normalised tensor); ``constant`` writes ``fill_value``;
``noise`` draws N(0, noise_std) (std 1 = one data standard deviation); ``blur`` uses a
Gaussian-blurred copy of the input. For point clouds ``duplicate`` replaces a dropped point by
a randomly chosen kept point of the same cloud (the reference's zero fill collapses dropped
points onto the origin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.functional import gaussian_blur

from reldrop.registry import Registry

__all__ = ["FILLS", "POINT_FILLS", "FillParams", "apply_fill"]


@dataclass(frozen=True, kw_only=True)
class FillParams:
    value: float = 0.0
    noise_std: float = 1.0
    blur_sigma: float = 2.0


#: fn(inputs, dropped, params, generator) -> replacement values (same shape as inputs); the
#: result is used where ``dropped`` is set
FillFn = Callable[[torch.Tensor, torch.Tensor, FillParams, torch.Generator | None], torch.Tensor]
#: image fills and point-cloud fills
FILLS: Registry[FillFn] = Registry("fill")
POINT_FILLS: Registry[FillFn] = Registry("point-cloud fill")


def _zero(x: torch.Tensor, dropped: torch.Tensor, params: FillParams,
          gen: torch.Generator | None) -> torch.Tensor:
    return torch.zeros_like(x)


def _constant(x: torch.Tensor, dropped: torch.Tensor, params: FillParams,
              gen: torch.Generator | None) -> torch.Tensor:
    return torch.full_like(x, params.value)


def _noise(x: torch.Tensor, dropped: torch.Tensor, params: FillParams,
           gen: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device="cpu", dtype=x.dtype).to(x.device)
    return noise * params.noise_std


@FILLS.register("blur")
def _blur(x: torch.Tensor, dropped: torch.Tensor, params: FillParams,
          gen: torch.Generator | None) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError("fill='blur' needs images N x C x H x W")
    # +-3 sigma, capped so the reflect padding fits images smaller than that (e.g. 8 x 8 digits)
    kernel = 2 * min(int(round(3 * params.blur_sigma)), min(x.shape[2], x.shape[3]) - 1) + 1
    return gaussian_blur(x, [kernel, kernel], [params.blur_sigma, params.blur_sigma])


@POINT_FILLS.register("duplicate")
def _duplicate(x: torch.Tensor, dropped: torch.Tensor, params: FillParams,
               gen: torch.Generator | None) -> torch.Tensor:
    """Each dropped point (N x P mask) becomes a copy of a random kept point of its cloud (the
    origin when a cloud lost every point)."""
    out = x.clone()
    for i in torch.nonzero(dropped.any(dim=1)).flatten().tolist():
        kept = torch.nonzero(~dropped[i]).flatten()
        lost = torch.nonzero(dropped[i]).flatten()
        if kept.numel() == 0:
            out[i, lost] = 0
            continue
        pick = torch.randint(0, kept.numel(), (lost.numel(),), generator=gen).to(kept.device)
        out[i, lost] = x[i, kept[pick]]
    return out


for _name, _fn in (("zero", _zero), ("constant", _constant), ("noise", _noise)):
    FILLS.add(_name, _fn)
    POINT_FILLS.add(_name, _fn)


def apply_fill(
    inputs: torch.Tensor,
    dropped: torch.Tensor,
    fill: str,
    params: FillParams,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``inputs`` with elements where ``dropped`` (N x H x W or N x P) is set replaced."""
    table = FILLS if inputs.ndim == 4 else POINT_FILLS
    replacement = table.get(fill)(inputs, dropped, params, generator)
    mask = dropped.unsqueeze(1) if inputs.ndim == 4 else dropped.unsqueeze(2)
    return torch.where(mask, replacement, inputs)
