"""Occlusion strategies selected by name: RelDrop variants and their random baselines.

RelDrop (Grüne et al. 2025, arXiv 2505.21595) occludes the input regions its own LRP relevance
finds most relevant:

- ``reldrop-pixel``: per sample R̂ = (R - min) / (max - min); drop element i where
  ``alpha * U(0,1) + (1 - alpha) * R̂_i >= 1 - beta``, i.e. with probability
  ``clip(((1 - alpha) R̂_i + alpha + beta - 1) / alpha, 0, 1)`` (defaults alpha 0.3, beta 0.5).
- ``reldrop-block``: one rectangle (random-erasing sizes: area ~ U(0.02, 0.4) * H * W, aspect
  log-uniform in [0.3, 1/0.3], clipped to the image) centred on one of the top-k relevant
  pixels (k = 1).
- ``reldrop-patch``: ``k_patches`` (1) rectangle of ``patch_area`` (1/5) the block's area,
  centred on one of the top-k (5) relevant pixels, as the reference.
- ``reldrop-points``: the pixel rule per point of an N x P x C cloud (alpha 0.5, beta 0.5, so
  P(drop) = R̂), applied to every cloud (p 1) with the reference's fill ``zero``
  (``duplicate``, which does not collapse dropped points onto the origin, is an option).
- ``random-erasing`` (Zhong et al. 2020): the block sizes with a uniformly random centre.
- ``random-pixel``: each element dropped with probability ``drop_rate``.

A strategy applies with probability ``p``: per sample (``coin="sample"``) or with one coin for
the whole batch (``coin="batch"``, the reference's block and patch). A sample whose relevance is
non-finite or constant falls back to the random variant (same budget) and is counted.

Randomness: a shared ``generator`` (draws depend on the batch), or per-sample ``seeds``
(:mod:`reldrop.keyed`): then every draw for a sample depends on its seed alone. With
``coin="batch"`` and seeds the batch's coin is drawn from the set of its seeds (order-free).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypedDict, Unpack

import torch

from reldrop.fills import FILLS, POINT_FILLS, FillParams, apply_fill
from reldrop.keyed import sub_generator
from reldrop.registry import Registry

__all__ = [
    "STRATEGIES",
    "DrawOptions",
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
    p: float | None = None
    coin: str | None = None
    alpha: float | None = None
    beta: float | None = None
    top_k: int | None = None
    k_patches: int = 1
    patch_area: float = 0.2
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
        defaults = {"p": 0.5, "coin": "sample", **STRATEGIES[self.strategy].defaults}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.coin not in ("sample", "batch"):
            raise ValueError(f"coin={self.coin!r}; expected 'sample' or 'batch'")
        if not 0.0 < self.patch_area <= 1.0:
            raise ValueError(f"patch_area={self.patch_area!r}; expected in (0, 1]")
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


class _Draws:
    """Random numbers for one batch: from a shared generator, or per row from its own seed."""

    def __init__(
        self, n: int, generator: torch.Generator | None, seeds: torch.Tensor | None, purpose: str
    ) -> None:
        self.shared = generator
        self.rows_gen: list[torch.Generator] | None = None
        if seeds is not None:
            seeds = torch.as_tensor(seeds, dtype=torch.int64).cpu()
            if seeds.shape != (n,):
                raise ValueError(f"seeds has shape {tuple(seeds.shape)}; expected ({n},), one per sample")
            self.rows_gen = [sub_generator(int(v), purpose) for v in seeds]

    @property
    def keyed(self) -> bool:
        return self.rows_gen is not None

    def gen(self, row: int) -> torch.Generator | None:
        """The generator for ``row``'s draws."""
        return self.shared if self.rows_gen is None else self.rows_gen[row]

    def uniform(self, rows: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """len(rows) x shape uniforms, one block per row."""
        if self.rows_gen is None:
            return torch.rand((len(rows), *shape), generator=self.shared)
        if not rows:
            return torch.zeros((0, *shape))
        return torch.stack([torch.rand(shape, generator=self.rows_gen[i]) for i in rows])


def _pixel_rule(
    x: torch.Tensor, rel: torch.Tensor | None, applied: torch.Tensor, cfg: OcclusionConfig,
    draws: _Draws,
) -> tuple[torch.Tensor, torch.Tensor]:
    assert rel is not None and cfg.alpha is not None and cfg.beta is not None
    shape = _element_shape(x)
    n, f = x.shape[0], math.prod(shape)
    # the rule runs where the relevance lives (the GPU in the trainer); draws come from the
    # CPU generator so results do not depend on the device
    r_hat, ok = _normalise(rel.detach())
    applied = applied.to(r_hat.device)
    uniform = draws.uniform(list(range(n)), (f,)).to(r_hat.device)
    drop = cfg.alpha * uniform + (1 - cfg.alpha) * r_hat >= 1 - cfg.beta
    fallback = applied & ~ok
    if fallback.any():
        usable = applied & ok
        budget = (
            float(pixel_drop_probability(r_hat[usable], cfg.alpha, cfg.beta).mean())
            if usable.any()
            else cfg.drop_rate
        )
        # the same uniforms against the batch's mean drop probability (keyed draws stay per row)
        drop[fallback] = uniform[fallback] < budget
    drop &= applied.unsqueeze(1)
    fallback = fallback.cpu()
    return drop.reshape(n, *shape), fallback


def _random_pixel(
    x: torch.Tensor, rel: torch.Tensor | None, applied: torch.Tensor, cfg: OcclusionConfig,
    draws: _Draws,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _element_shape(x)
    drop = draws.uniform(list(range(x.shape[0])), shape) < cfg.drop_rate
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
    draws: _Draws, *, patches: int, guided: bool, scale: float = 1.0,
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
        gen = draws.gen(i)
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
            area = (lo + (hi - lo) * float(_uniform((1,), gen))) * h * w * scale
            rows, cols = _rectangle(centre // w, centre % w, area, cfg, h, w, gen)
            drop[i, rows, cols] = True
    return drop, fallback


def _element_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[2], x.shape[3]) if x.ndim == 4 else (x.shape[1],)


def _block(x, rel, applied, cfg, draws):  # type: ignore[no-untyped-def]
    return _erase(x, rel, applied, cfg, draws, patches=1, guided=True)


def _patch(x, rel, applied, cfg, draws):  # type: ignore[no-untyped-def]
    return _erase(x, rel, applied, cfg, draws, patches=cfg.k_patches, guided=True,
                  scale=cfg.patch_area)


def _random_erasing(x, rel, applied, cfg, draws):  # type: ignore[no-untyped-def]
    return _erase(x, rel, applied, cfg, draws, patches=1, guided=False)


def _none(x, rel, applied, cfg, draws):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    return torch.zeros(n, *_element_shape(x), dtype=torch.bool), torch.zeros(n, dtype=torch.bool)


_IMAGE = ("image",)
STRATEGIES: Registry[_Strategy] = Registry("strategy")
STRATEGIES.add("none", _Strategy(_none, False, ("image", "points"), {"fill": "zero"}))
STRATEGIES.add("reldrop-pixel",
               _Strategy(_pixel_rule, True, _IMAGE, {"alpha": 0.3, "beta": 0.5, "fill": "zero"}))
STRATEGIES.add("reldrop-block",
               _Strategy(_block, True, _IMAGE, {"top_k": 1, "fill": "zero", "coin": "batch"}))
STRATEGIES.add("reldrop-patch",
               _Strategy(_patch, True, _IMAGE, {"top_k": 5, "fill": "zero", "coin": "batch"}))
STRATEGIES.add("reldrop-points", _Strategy(
    _pixel_rule, True, ("points",), {"alpha": 0.5, "beta": 0.5, "fill": "zero", "p": 1.0}))
STRATEGIES.add("random-erasing", _Strategy(_random_erasing, False, _IMAGE, {"fill": "zero"}))
STRATEGIES.add("random-pixel",
               _Strategy(_random_pixel, False, ("image", "points"), {"fill": "zero"}))


class DrawOptions(TypedDict, total=False):
    """Where an occlusion's randomness comes from (keywords of :meth:`Occluder.__call__` and
    :meth:`Occluder.drop_mask`): ``applied`` (bool per row: which rows to occlude; default drawn
    with probability ``p``), ``generator`` (a torch generator), ``seeds`` (int64, one per
    sample, :func:`reldrop.keyed.sample_seeds`: every draw a function of the sample's seed)."""

    applied: torch.Tensor | None
    generator: torch.Generator | None
    seeds: torch.Tensor | None


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

    def select(
        self, n: int, generator: torch.Generator | None = None, *, seeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Which of ``n`` samples to occlude: each with probability ``p`` (``coin="sample"``) or
        all or none (``coin="batch"``). With ``seeds`` a sample's coin is its own seed's draw
        (batch coin: the draw of a seed hashed from the set of the batch's seeds)."""
        if self.config.strategy == "none":
            return torch.zeros(n, dtype=torch.bool)
        assert self.config.p is not None
        if seeds is None:
            if self.config.coin == "batch":
                return (_uniform((1,), generator) < self.config.p).expand(n).clone()
            return _uniform((n,), generator) < self.config.p
        seeds = torch.as_tensor(seeds, dtype=torch.int64).cpu()
        if self.config.coin == "batch":
            batch_seed = int(torch.sort(seeds).values.sum()) if n else 0
            batch_seed = int(_uniform((1,), sub_generator(batch_seed, "coin")) * 2**62)
            seeds = torch.full((n,), batch_seed, dtype=torch.int64)
        return _Draws(n, None, seeds, "coin").uniform(list(range(n)), ())  < self.config.p

    def drop_mask(
        self, inputs: torch.Tensor, relevance: torch.Tensor | None = None,
        **draws: Unpack[DrawOptions],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which elements to drop (bool N x H x W or N x P) and which samples fell back."""
        _, dropped, fallback = self._drop(inputs, relevance, draws)
        return dropped, fallback

    def _drop(
        self, inputs: torch.Tensor, relevance: torch.Tensor | None, draws: DrawOptions,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(applied, dropped, fallback) of one batch."""
        from reldrop.relevance import check_inputs  # avoid a cycle at import

        unknown = sorted(set(draws) - set(DrawOptions.__annotations__))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; known: "
                            f"{sorted(DrawOptions.__annotations__)}")
        generator, seeds = draws.get("generator"), draws.get("seeds")
        kind = check_inputs(inputs)
        if kind not in self._strategy.kinds:
            raise ValueError(
                f"strategy {self.config.strategy!r} works on {self._strategy.kinds} inputs, "
                f"got {kind} inputs of shape {tuple(inputs.shape)}"
            )
        n = inputs.shape[0]
        applied = draws.get("applied")
        if applied is None:
            applied = self.select(n, generator, seeds=seeds)
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
        dropped, fallback = self._strategy.fn(inputs, relevance, applied, self.config,
                                              _Draws(n, generator, seeds, "mask"))
        return applied, dropped.to(inputs.device), fallback

    def fill(
        self,
        inputs: torch.Tensor,
        dropped: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        seeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace the ``dropped`` elements of ``inputs`` with this strategy's fill (random
        fills draw per row from ``seeds`` when given)."""
        assert self.config.fill is not None
        dropped = dropped.to(inputs.device)
        if seeds is None or self.config.fill not in ("noise", "duplicate"):
            return apply_fill(inputs, dropped, self.config.fill, self._fill, generator)
        draws = _Draws(inputs.shape[0], None, seeds, "fill")
        out = inputs.clone()
        for i in torch.nonzero(dropped.reshape(inputs.shape[0], -1).any(1)).flatten().tolist():
            out[i : i + 1] = apply_fill(inputs[i : i + 1], dropped[i : i + 1], self.config.fill,
                                        self._fill, draws.gen(i))
        return out

    def __call__(
        self, inputs: torch.Tensor, relevance: torch.Tensor | None = None,
        **draws: Unpack[DrawOptions],
    ) -> OcclusionResult:
        """Occlude ``inputs``; ``relevance`` (N x H x W or N x P) is needed by RelDrop variants
        for the rows in ``applied`` (other rows are ignored); ``draws``: :class:`DrawOptions`."""
        applied, dropped, fallback = self._drop(inputs, relevance, draws)
        out = self.fill(inputs, dropped, draws.get("generator"), seeds=draws.get("seeds"))
        return OcclusionResult(out, dropped, applied.to(inputs.device), fallback)
