"""A model replica that explains with its LRP composite registered once per weight version.

:func:`reldrop.relevance.relevance` builds and registers a zennit composite on every call
(canonizers merge BatchNorm into the weights, rule hooks are attached, then all of it is
undone). An explainer calls it for every batch with the same weights, so the replica keeps the
composite registered until the weights change. Loading weights while it is registered would
be wrong twice over: the canonizer restores the *old* parameters on removal, and the new ones
would never have their BatchNorm merged. So :meth:`ExplainerReplica.load` removes the
composite first and the next :meth:`ExplainerReplica.relevance` registers a fresh one. The
result is bitwise what ``relevance()`` returns for the same weights and inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from zennit.attribution import Gradient

from reldrop.checkpoint import load_numpy_state
from reldrop.composites import Bounds, make_composite

__all__ = ["ExplainerReplica"]


class ExplainerReplica:
    """``model`` in eval mode on ``device``, explained with composite ``composite``."""

    def __init__(self, model: nn.Module, *, composite: str, bounds: Bounds, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.composite = composite
        self.bounds = bounds
        self.device = device
        self.num_classes: int | None = None  # known after the first call
        self.registrations = 0  # how often a composite was registered (once per version)
        self._attributor: Gradient | None = None

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        """Swap in new weights (numpy state dict); the composite is re-registered lazily."""
        self.release()
        load_numpy_state(self.model, dict(state))

    def release(self) -> None:
        """Remove the composite: parameters are restored bitwise, hooks are gone."""
        if self._attributor is not None:
            self._attributor.__exit__(None, None, None)
            self._attributor = None

    def _registered(self) -> Gradient:
        if self._attributor is None:
            self.model.eval()
            composite = make_composite(self.composite, self.model, self.bounds)
            attributor = Gradient(model=self.model, composite=composite)
            attributor.__enter__()
            self._attributor = attributor
            self.registrations += 1
        return self._attributor

    def relevance(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Signed LRP relevance for class ``targets``, summed over channels (N x H x W images,
        N x P point clouds), on ``self.device``. ``targets`` must be valid class indices on
        ``inputs``' device (checked by the caller on the host, so no device sync here)."""
        attributor = self._registered()

        def seed(output: torch.Tensor) -> torch.Tensor:
            if output.ndim != 2:
                raise ValueError(f"model output has shape {tuple(output.shape)}; expected N x classes")
            self.num_classes = int(output.shape[1])
            return torch.nn.functional.one_hot(targets, output.shape[1]).to(output.dtype)

        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            _, attr = attributor(x, seed)
        attr = attr.detach()
        return attr.sum(dim=1) if inputs.ndim == 4 else attr.sum(dim=2)

    def __del__(self) -> None:  # pragma: no cover - interpreter teardown order varies
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass
