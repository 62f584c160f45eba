"""The input space the model sees: uint8 pixels -> (x / 255 - mean) / std, per channel.

Occlusion fills are defined in this space (``zero`` = the dataset mean), fixing the reference
code's quirk of writing the mean into an already-normalised tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Normalization"]


@dataclass(frozen=True, kw_only=True)
class Normalization:
    """Per-channel mean and std of the [0, 1]-scaled data."""

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} must be non-empty, equal length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @classmethod
    def estimate(cls, pixels: Any, *, min_std: float = 1e-3) -> Normalization:
        """Per-channel mean and (population) std of uint8 samples ``pixels`` N x C x H x W (a
        numpy array or CPU tensor; callers pass a few hundred); ``std`` floored at ``min_std``
        so a constant channel does not divide by zero."""
        data = np.asarray(pixels, dtype=np.float64)
        if data.ndim != 4 or data.shape[0] == 0:
            raise ValueError(f"pixels of shape {data.shape}; expected N x C x H x W with N >= 1")
        data = data / 255.0
        mean = tuple(float(v) for v in data.mean(axis=(0, 2, 3)))
        std = tuple(max(float(v), min_std) for v in data.std(axis=(0, 2, 3)))
        return cls(mean=mean, std=std)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"input has {c} channels; normalization has {len(self.mean)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return mean, std

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 255] float) N x C x H x W -> normalised float32."""
        mean, std = self._stats(pixels)
        return (pixels.float() / 255.0 - mean) / std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised -> [0, 1] float (for plots)."""
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def bounds(self) -> tuple[float, float]:
        """Lowest and highest value a normalised pixel can take (for box LRP rules)."""
        low = min((0.0 - m) / s for m, s in zip(self.mean, self.std))
        high = max((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return low, high
