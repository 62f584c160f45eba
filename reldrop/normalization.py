"""The input space the model sees: uint8 pixels -> (x / 255 - mean) / std, per channel.

Occlusion fills are defined in this space (``zero`` = the dataset mean), fixing the reference
code's quirk of writing the mean into an already-normalised tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

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
