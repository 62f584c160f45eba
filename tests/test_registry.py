"""The one registry shape every extension point uses."""

from __future__ import annotations

import pytest

from reldrop.composites import CANONIZERS, COMPOSITES
from reldrop.fills import FILLS, POINT_FILLS
from reldrop.models import MODELS
from reldrop.occlusion import STRATEGIES
from reldrop.registry import Registry
from reldrop.regularizers import REGULARIZERS


def test_register_get_names_and_errors() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("b")
    def _b() -> int:
        return 2

    reg.add("a", 1)
    assert reg.names() == ["a", "b"] and reg.get("a") == 1 and "b" in reg and len(reg) == 2
    with pytest.raises(ValueError, match=r"widget='c' is unknown; known: \['a', 'b'\]"):
        reg.get("c")
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 3)


@pytest.mark.parametrize("registry", [COMPOSITES, CANONIZERS, FILLS, POINT_FILLS, MODELS,
                                      STRATEGIES, REGULARIZERS])
def test_every_extension_point_is_a_registry(registry: Registry) -> None:
    assert isinstance(registry, Registry) and registry.names()
    with pytest.raises(ValueError, match="is unknown; known"):
        registry.get("no-such-entry")


def test_duplicate_fill_is_a_real_fill() -> None:
    import torch

    from reldrop.fills import FillParams, apply_fill

    clouds = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    dropped = torch.tensor([[True, False, False, True], [False] * 4])
    out = apply_fill(clouds, dropped, "duplicate", FillParams(), torch.Generator().manual_seed(0))
    kept = {tuple(p.tolist()) for p in clouds[0, 1:3]}
    assert {tuple(p.tolist()) for p in out[0, [0, 3]]} <= kept  # copies of kept points
    assert torch.equal(out[1], clouds[1])
