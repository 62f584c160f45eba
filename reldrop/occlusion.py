"""Occlusion strategies selected by name: RelDrop variants and their random baselines.

RelDrop (Grüne et al. 2025, arXiv 2505.21595) occludes the input regions its own LRP relevance
finds most relevant:

- ``reldrop-pixel``: per sample R̂ = (R - min) / (max - min); drop element i where
  ``alpha * U(0,1) + (1 - alpha) * R̂_i >= 1 - beta``, i.e. with probability
  ``clip(((1 - alpha) R̂_i + alpha + beta - 1) / alpha, 0, 1)`` (defaults alpha 0.3, beta 0.5).
- ``reldrop-block``: one rectangle (random-erasing sizes: area ~ U(0.02, 0.4) * H * W, aspect
  log-uniform in [0.3, 1/0.3], clipped to the image) centred on one of the top-k relevant
  pixels (k = 1).
- ``reldrop-patch``: ``k_patches`` (5) rectangles of 1/k_patches the area each, every centre drawn
  from the top-k relevant pixels (default k: 2% of the pixels, at least k_patches; with the
  reference's k = 1 every patch would land on the same spot).
- ``reldrop-points``: the pixel rule per point of an N x P x C cloud (alpha 0.5, beta 0.5, so
  P(drop) = R̂), default fill ``duplicate``.
- ``random-erasing`` (Zhong et al. 2020): the block sizes with a uniformly random centre.
- ``random-pixel``: each element dropped with probability ``drop_rate``.

Each strategy applies to a sample with probability ``p``. A sample whose relevance is
non-finite or constant falls back to the random variant (same budget) and is counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from reldrop.fills import FILLS, POINT_FILLS, FillParams, apply_fill

__all__ = [
    "STRATEGIES",
    "OcclusionConfig",
    "OcclusionResult",
    "Occluder",
    "pixel_drop_probability",
]


class OcclusionResult(NamedTuple):
    inputs: torch.Tensor  #: occluded inputs, same shape as the given ones
    dropped: torch.Tensor  #: bool, N x H x W (images) or N x P (points): what was replaced
    applied: torch.Tensor  #: bool, N: samples chosen for occlusion (probability p)
    fallback: torch.Tensor  #: bool, N: samples whose relevance was unusable -> random variant


@dataclass(frozen=True)
class _Strategy:
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    needs_relevance: bool
    kinds: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OcclusionConfig:
    """Parameters of one occlusion strategy; ``None`` means the strategy's reference default."""

    strategy: str = "reldrop-pixel"
    p: float = 0.5
    alpha: float | None = None
    beta: float | None = None
    top_k: int | None = None
    k_patches: int = 5
    area: tuple[float, float] = (0.02, 0.4)
    aspect: float = 0.3
    drop_rate: float = 0.25
    fill: str | None = None
    fill_value: float = 0.0
    noise_std: float = 1.0
    blur_sigma: float = 2.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={self.strategy!r} is unknown; known strategies: {sorted(STRATEGIES)}"
            )
        for name, default in STRATEGIES[self.strategy].defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for name in ("p", "alpha", "beta", "drop_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}={value!r} is outside [0, 1]")
        lo, hi = self.area
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"area={self.area!r}; expected 0 < low <= high <= 1")
        if not 0.0 < self.aspect <= 1.0:
            raise ValueError(f"aspect={self.aspect!r}; expected 0 < aspect <= 1")
        if self.k_patches < 1 or (self.top_k is not None and self.top_k < 1):
            raise ValueError(f"k_patches={self.k_patches}, top_k={self.top_k}; expected >= 1")
        fills = POINT_FILLS if STRATEGIES[self.strategy].kinds == ("points",) else FILLS
        if self.fill is not None and self.fill not in fills:
            raise ValueError(f"fill={self.fill!r} is unknown; known fills: {sorted(fills)}")
        if self.noise_std < 0 or self.blur_sigma <= 0:
            raise ValueError("noise_std must be >= 0 and blur_sigma > 0")


def pixel_drop_probability(r_hat: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """P(alpha * U + (1 - alpha) * r_hat >= 1 - beta) for U ~ U(0, 1)."""
    if alpha == 0:
        return ((1 - alpha) * r_hat >= 1 - beta).to(r_hat.dtype)
    return (((1 - alpha) * r_hat + alpha + beta - 1) / alpha).clamp(0, 1)


def _normalise(relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample min-max normalised relevance (N x F) and whether it was usable."""
    flat = relevance.reshape(relevance.shape[0], -1).float()
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.where(finite.unsqueeze(1), flat, torch.zeros_like(flat))
    lo, hi = safe.min(dim=1, keepdim=True).values, safe.max(dim=1, keepdim=True).values
    span = hi - lo
    ok = finite & (span.squeeze(1) > 0)
    r_hat = torch.where(ok.unsqueeze(1), (safe - lo) / span.clamp_min(1e-30), torch.zeros_like(safe))
    return r_hat, ok


def _uniform(shape: tuple[int, ...], gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=gen)


def _pixel_rule(
    x: torch.Tensor, rel: torch.Tensor | None, applied: torch.Tensor, cfg: OcclusionConfig,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    assert rel is not None and cfg.alpha is not None and cfg.beta is not None
    shape = _element_shape(x)
    n, f = x.shape[0], math.prod(shape)
    # the rule runs where the relevance lives (the GPU in the trainer); draws come from the
    # CPU generator so results do not depend on the device
    r_hat, ok = _normalise(rel.detach())
    applied = applied.to(r_hat.device)
    uniform = _uniform((n, f), gen).to(r_hat.device)
    drop = cfg.alpha * uniform + (1 - cfg.alpha) * r_hat >= 1 - cfg.beta
    fallback = applied & ~ok
    if fallback.any():
        usable = applied & ok
        budget = (
            float(pixel_drop_probability(r_hat[usable], cfg.alpha, cfg.beta).mean())
            if usable.any()
            else cfg.drop_rate
        )
        redraw = _uniform((int(fallback.sum()), f), gen).to(r_hat.device) < budget
        drop[fallback] = redraw
    drop &= applied.unsqueeze(1)
    fallback = fallback.cpu()
    return drop.reshape(n, *shape), fallback


def _random_pixel(
    x: torch.Tensor, rel: torch.Tensor | None, applied: torch.Tensor, cfg: OcclusionConfig,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _element_shape(x)
    drop = _uniform((x.shape[0], *shape), gen) < cfg.drop_rate
    drop &= applied.cpu().view(-1, *([1] * len(shape)))
    return drop, torch.zeros(x.shape[0], dtype=torch.bool)


def _rectangle(
    cy: int, cx: int, area: float, cfg: OcclusionConfig, h: int, w: int,
    gen: torch.Generator | None,
) -> tuple[slice, slice]:
    """A random-erasing rectangle of ``area`` pixels centred at (cy, cx), clipped to the image."""
    log_ratio = math.log(cfg.aspect) + float(_uniform((1,), gen)) * 2 * math.log(1 / cfg.aspect)
    ratio = math.exp(log_ratio)
    rh = min(h, max(1, int(round(math.sqrt(area * ratio)))))
    rw = min(w, max(1, int(round(math.sqrt(area / ratio)))))
    top, left = cy - rh // 2, cx - rw // 2
    return slice(max(0, top), min(h, top + rh)), slice(max(0, left), min(w, left + rw))


def _erase(
    x: torch.Tensor, rel: torch.Tensor | None, applied: torch.Tensor, cfg: OcclusionConfig,
    gen: torch.Generator | None, *, patches: int, guided: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, h, w = x.shape
    drop = torch.zeros(n, h, w, dtype=torch.bool)
    fallback = torch.zeros(n, dtype=torch.bool)
    ok = torch.zeros(n, dtype=torch.bool)
    flat = None
    if guided:
        assert rel is not None
        flat = rel.detach().cpu().reshape(n, -1).float()
        _, ok = _normalise(flat)
    top_k = cfg.top_k or 1
    for i in torch.nonzero(applied.cpu()).flatten().tolist():
        if guided and ok[i]:
            assert flat is not None
            candidates = flat[i].topk(min(top_k, h * w)).indices
        else:
            fallback[i] = guided
            candidates = None
        for _ in range(patches):
            if candidates is not None:
                centre = int(candidates[int(torch.randint(0, candidates.numel(), (1,), generator=gen))])
            else:
                centre = int(torch.randint(0, h * w, (1,), generator=gen))
            lo, hi = cfg.area
            area = (lo + (hi - lo) * float(_uniform((1,), gen))) * h * w / patches
            rows, cols = _rectangle(centre // w, centre % w, area, cfg, h, w, gen)
            drop[i, rows, cols] = True
    return drop, fallback


def _element_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[2], x.shape[3]) if x.ndim == 4 else (x.shape[1],)


def _block(x, rel, applied, cfg, gen):  # type: ignore[no-untyped-def]
    return _erase(x, rel, applied, cfg, gen, patches=1, guided=True)


def _patch(x, rel, applied, cfg, gen):  # type: ignore[no-untyped-def]
    if cfg.top_k is None:
        h, w = x.shape[2], x.shape[3]
        cfg = replace(cfg, top_k=max(cfg.k_patches, round(0.02 * h * w)))
    return _erase(x, rel, applied, cfg, gen, patches=cfg.k_patches, guided=True)


def _random_erasing(x, rel, applied, cfg, gen):  # type: ignore[no-untyped-def]
    return _erase(x, rel, applied, cfg, gen, patches=1, guided=False)


def _none(x, rel, applied, cfg, gen):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    return torch.zeros(n, *_element_shape(x), dtype=torch.bool), torch.zeros(n, dtype=torch.bool)


_IMAGE = ("image",)
STRATEGIES: dict[str, _Strategy] = {
    "none": _Strategy(_none, False, ("image", "points"), {"fill": "zero"}),
    "reldrop-pixel": _Strategy(_pixel_rule, True, _IMAGE, {"alpha": 0.3, "beta": 0.5, "fill": "zero"}),
    "reldrop-block": _Strategy(_block, True, _IMAGE, {"top_k": 1, "fill": "zero"}),
    "reldrop-patch": _Strategy(_patch, True, _IMAGE, {"fill": "zero"}),
    "reldrop-points": _Strategy(
        _pixel_rule, True, ("points",), {"alpha": 0.5, "beta": 0.5, "fill": "duplicate"}
    ),
    "random-erasing": _Strategy(_random_erasing, False, _IMAGE, {"fill": "zero"}),
    "random-pixel": _Strategy(_random_pixel, False, ("image", "points"), {"fill": "zero"}),
}


class Occluder:
    """Applies one strategy to batches: ``Occluder("reldrop-block", p=0.3)(x, relevance)``."""

    def __init__(self, config: OcclusionConfig | str = "reldrop-pixel", **overrides: Any) -> None:
        if isinstance(config, str):
            config = OcclusionConfig(strategy=config, **overrides)
        elif overrides:
            config = replace(config, **overrides)
        if not isinstance(config, OcclusionConfig):
            raise TypeError(f"config must be an OcclusionConfig or a name, got {type(config)}")
        self.config = config
        self._strategy = STRATEGIES[config.strategy]
        self._fill = FillParams(
            value=config.fill_value, noise_std=config.noise_std, blur_sigma=config.blur_sigma
        )

    @property
    def needs_relevance(self) -> bool:
        return self._strategy.needs_relevance

    def select(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which of ``n`` samples to occlude (each with probability ``p``)."""
        if self.config.strategy == "none":
            return torch.zeros(n, dtype=torch.bool)
        return _uniform((n,), generator) < self.config.p

    def drop_mask(
        self,
        inputs: torch.Tensor,
        relevance: torch.Tensor | None = None,
        *,
        applied: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which elements to drop (bool N x H x W or N x P) and which samples fell back."""
        from reldrop.relevance import check_inputs  # noqa: PLC0415 (avoid a cycle at import)

        kind = check_inputs(inputs)
        if kind not in self._strategy.kinds:
            raise ValueError(
                f"strategy {self.config.strategy!r} works on {self._strategy.kinds} inputs, "
                f"got {kind} inputs of shape {tuple(inputs.shape)}"
            )
        n = inputs.shape[0]
        if applied is None:
            applied = self.select(n, generator)
        if applied.shape != (n,) or applied.dtype != torch.bool:
            raise ValueError(f"applied must be a bool tensor of shape ({n},)")
        if self.needs_relevance:
            expected = (n, *_element_shape(inputs))
            if relevance is None or tuple(relevance.shape) != expected:
                got = None if relevance is None else tuple(relevance.shape)
                raise ValueError(
                    f"strategy {self.config.strategy!r} needs relevance of shape {expected}, "
                    f"got {got}"
                )
        dropped, fallback = self._strategy.fn(inputs, relevance, applied, self.config, generator)
        return dropped.to(inputs.device), fallback

    def fill(
        self,
        inputs: torch.Tensor,
        dropped: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Replace the ``dropped`` elements of ``inputs`` with this strategy's fill."""
        assert self.config.fill is not None
        return apply_fill(inputs, dropped.to(inputs.device), self.config.fill, self._fill, generator)

    def __call__(
        self,
        inputs: torch.Tensor,
        relevance: torch.Tensor | None = None,
        *,
        applied: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> OcclusionResult:
        """Occlude ``inputs``; ``relevance`` (N x H x W or N x P) is needed by RelDrop variants
        for the rows in ``applied`` (other rows are ignored)."""
        if applied is None:
            applied = self.select(inputs.shape[0], generator)
        dropped, fallback = self.drop_mask(inputs, relevance, applied=applied, generator=generator)
        out = self.fill(inputs, dropped, generator)
        return OcclusionResult(out, dropped, applied.to(inputs.device), fallback)
