"""Occlusion strategies against the paper's formulas and slow literal references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reldrop.occlusion import STRATEGIES, Occluder, OcclusionConfig, pixel_drop_probability

scipy_stats = pytest.importorskip("scipy.stats")


def _binomial_ok(freq: torch.Tensor, prob: torch.Tensor, n: int, sigmas: float = 5.0) -> bool:
    tol = sigmas * torch.sqrt(prob * (1 - prob) / n) + 1e-9
    return bool(((freq - prob).abs() <= tol).all())


# ---- pixel rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.5), (0.5, 0.5), (0.8, 0.2), (1.0, 0.3), (0.1, 0.9)])
def test_pixel_drop_frequency_matches_formula(alpha, beta):
    n, h, w = 3000, 6, 6
    # every sample: R = a shuffled ramp from -2 to 5, so R̂ = the ramp mapped to [0, 1]
    ramp = torch.linspace(-2.0, 5.0, h * w)
    rel = ramp[torch.randperm(h * w, generator=torch.Generator().manual_seed(0))].view(1, h, w)
    rel = rel.expand(n, h, w).contiguous()
    occ = Occluder("reldrop-pixel", alpha=alpha, beta=beta, p=1.0)
    out = occ(torch.ones(n, 1, h, w), rel, generator=torch.Generator().manual_seed(5))
    freq = out.dropped.float().mean(dim=0)
    r_hat = (rel[0] + 2.0) / 7.0
    formula = (((1 - alpha) * r_hat + alpha + beta - 1) / alpha).clamp(0, 1)
    assert _binomial_ok(freq, formula, n)
    torch.testing.assert_close(pixel_drop_probability(r_hat, alpha, beta), formula)
    assert out.applied.all() and not out.fallback.any()
    assert torch.equal(out.inputs[:, 0] == 0, out.dropped)  # zero fill exactly where dropped


def test_points_rule_drop_probability_is_r_hat():
    n, pts = 3000, 16
    rel = torch.linspace(3.0, -1.0, pts).expand(n, pts).contiguous()
    out = Occluder("reldrop-points", p=1.0)(
        torch.randn(n, pts, 3), rel, generator=torch.Generator().manual_seed(6)
    )
    assert _binomial_ok(out.dropped.float().mean(dim=0), (rel[0] + 1) / 4, n)


def _literal_pixel_rule(rel: torch.Tensor, u: torch.Tensor, alpha: float, beta: float):
    """Element by element, in float32 like the vectorised code."""
    n = rel.shape[0]
    values = rel.reshape(n, -1).numpy().astype(np.float32)
    draws = u.numpy().astype(np.float32)
    f32 = np.float32
    out = np.zeros(values.shape, dtype=bool)
    for i in range(n):
        lo = min(values[i])
        hi = max(values[i])
        for j in range(values.shape[1]):
            r_hat = f32(values[i, j] - lo) / f32(hi - lo)
            score = f32(alpha) * draws[i, j] + f32(1 - alpha) * r_hat
            out[i, j] = score >= f32(1 - beta)
    return torch.from_numpy(out).reshape(rel.shape)


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.5), (0.5, 0.5), (0.7, 0.1)])
def test_pixel_rule_equals_literal_loop(alpha, beta):
    n, h, w = 12, 5, 7
    rel = torch.randn(n, h, w, generator=torch.Generator().manual_seed(8)) * 3 + 1
    applied = torch.ones(n, dtype=torch.bool)
    out = Occluder("reldrop-pixel", alpha=alpha, beta=beta)(
        torch.randn(n, 2, h, w), rel, applied=applied, generator=torch.Generator().manual_seed(9)
    )
    # with ``applied`` given the rule's first draw is one U(0,1) per element
    u = torch.rand((n, h * w), generator=torch.Generator().manual_seed(9))
    assert torch.equal(out.dropped, _literal_pixel_rule(rel, u, alpha, beta))


def test_only_applied_rows_change(images):
    rel = torch.randn(8, 16, 16)
    applied = torch.tensor([True, False] * 4)
    out = Occluder("reldrop-pixel")(images, rel, applied=applied, generator=torch.Generator())
    assert torch.equal(out.inputs[~applied], images[~applied])
    assert not out.dropped[~applied].any() and out.dropped[applied].any()
    assert torch.equal(out.applied, applied)


@pytest.mark.parametrize("strategy", ["reldrop-pixel", "reldrop-block", "random-erasing", "random-pixel"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_probability_p_respected(strategy, p):
    n = 4000
    occ = Occluder(strategy, p=p, coin="sample")
    applied = occ.select(n, torch.Generator().manual_seed(10))
    assert abs(applied.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9
    out = occ(torch.randn(50, 1, 8, 8), torch.randn(50, 8, 8), generator=torch.Generator())
    assert not out.dropped[~out.applied].any()
    if p == 1.0:
        assert out.applied.all()


def test_none_strategy_is_identity(images):
    out = Occluder("none", p=1.0)(images)
    assert torch.equal(out.inputs, images) and not out.dropped.any() and not out.applied.any()


def test_random_pixel_rate():
    n = 500
    for x in (torch.randn(n, 1, 8, 8), torch.randn(n, 64, 3)):
        out = Occluder("random-pixel", p=1.0, drop_rate=0.2)(x, generator=torch.Generator().manual_seed(0))
        total = out.dropped.numel()
        assert abs(out.dropped.float().mean().item() - 0.2) <= 5 * math.sqrt(0.16 / total)
        assert not out.fallback.any()


# ---- block / patch / random erasing -------------------------------------------------------------


def _is_rectangle(mask: torch.Tensor) -> tuple[int, int]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    assert box.all() and int(mask.sum()) == box.numel()
    return box.shape[0], box.shape[1]


def test_block_contains_unique_maximum():
    n, h, w = 60, 24, 24
    gen = torch.Generator().manual_seed(11)
    rel = torch.randn(n, h, w, generator=gen)
    ys = torch.randint(6, h - 6, (n,), generator=gen)
    xs = torch.randint(6, w - 6, (n,), generator=gen)
    rel[torch.arange(n), ys, xs] = 100.0
    out = Occluder("reldrop-block", p=1.0)(torch.randn(n, 3, h, w), rel, generator=gen)
    for i in range(n):
        _is_rectangle(out.dropped[i])
        assert out.dropped[i, ys[i], xs[i]]
    assert not out.fallback.any()


def _single_pixel_centres(strategy: str, rel: torch.Tensor, **kw) -> torch.Tensor:
    """Tiny areas make each rectangle one pixel: the dropped pixels are the centres."""
    n, h, w = rel.shape
    out = Occluder(strategy, p=1.0, area=(1e-6, 1e-6), **kw)(
        torch.zeros(n, 1, h, w), rel, generator=torch.Generator().manual_seed(12)
    )
    return out.dropped.reshape(n, -1)


def test_patch_centres_are_among_top_k():
    n, h, w, k = 400, 10, 10, 7
    rel = torch.randn(n, h, w, generator=torch.Generator().manual_seed(13))
    dropped = _single_pixel_centres("reldrop-patch", rel, top_k=k, k_patches=5)
    top = torch.zeros_like(dropped)
    top.scatter_(1, rel.reshape(n, -1).topk(k).indices, True)
    assert dropped.any(dim=1).all()
    assert not (dropped & ~top).any()
    # centres are uniform among the k: every rank is used about equally often
    ranks = rel.reshape(n, -1).argsort(dim=1, descending=True).argsort(dim=1)
    counts = torch.bincount(ranks[dropped], minlength=k)[:k].numpy()
    assert scipy_stats.chisquare(counts).pvalue > 1e-4


def test_patch_default_is_one_rectangle_among_top_5_at_a_fifth_of_the_block():
    n, h, w = 200, 20, 20
    rel = torch.randn(n, h, w, generator=torch.Generator().manual_seed(14))
    dropped = _single_pixel_centres("reldrop-patch", rel)
    top5 = torch.zeros_like(dropped)
    top5.scatter_(1, rel.reshape(n, -1).topk(5).indices, True)
    assert (dropped.sum(dim=1) == 1).all() and not (dropped & ~top5).any()
    cfg = OcclusionConfig(strategy="reldrop-patch")
    assert (cfg.k_patches, cfg.top_k, cfg.patch_area, cfg.coin) == (1, 5, 0.2, "batch")


def test_batch_coin_occludes_all_or_none():
    occ = Occluder("reldrop-block", p=0.4)  # coin="batch" by default, as the reference
    gen = torch.Generator().manual_seed(3)
    picks = [occ.select(16, gen) for _ in range(2000)]
    assert all(bool(a.all()) or not bool(a.any()) for a in picks)
    rate = sum(bool(a.all()) for a in picks) / len(picks)
    assert abs(rate - 0.4) < 5 * math.sqrt(0.24 / 2000)


def test_random_erasing_centres_are_uniform():
    n, h, w = 6400, 8, 8
    dropped = _single_pixel_centres("random-erasing", torch.zeros(n, h, w))
    assert (dropped.sum(dim=1) == 1).all()
    counts = dropped.sum(dim=0).numpy()
    assert scipy_stats.chisquare(counts).pvalue > 1e-4


def test_patch_area_is_area_over_k_patches():
    h = w = 50  # area fraction 0.2 fixed, square: block 0.2 * 2500 = 500 px -> 22 x 22;
    rel = torch.zeros(4, h, w)  # patch 500 / 5 = 100 px -> 10 x 10 (top_k 1: all on one spot)
    rel[:, 25, 25] = 1.0
    kw = {"p": 1.0, "area": (0.2, 0.2), "aspect": 1.0}
    block = Occluder("reldrop-block", **kw)(torch.zeros(4, 1, h, w), rel, generator=torch.Generator())
    patch = Occluder("reldrop-patch", top_k=1, k_patches=5, **kw)(
        torch.zeros(4, 1, h, w), rel, generator=torch.Generator()
    )
    for i in range(4):
        assert _is_rectangle(block.dropped[i]) == (22, 22)
        assert _is_rectangle(patch.dropped[i]) == (10, 10)


def _literal_rectangles(n: int, h: int, w: int, rng: np.random.Generator, patches: int = 1):
    """The stated size distribution, centred mid-image, rounded and clipped like the code."""
    area = rng.uniform(0.02, 0.4, n) * h * w / patches
    ratio = np.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3), n))
    rh = np.clip(np.round(np.sqrt(area * ratio)), 1, h)
    rw = np.clip(np.round(np.sqrt(area / ratio)), 1, w)
    cy, cx = h // 2, w // 2
    top, left = cy - rh // 2, cx - rw // 2
    rh = np.minimum(h, top + rh) - np.maximum(0, top)
    rw = np.minimum(w, left + rw) - np.maximum(0, left)
    return rh * rw / (h * w), np.log(rh / rw)


@pytest.mark.parametrize("strategy,patches", [("reldrop-block", 1), ("reldrop-patch", 5)])
def test_rectangle_size_distribution(strategy, patches):
    n, h, w = 1500, 64, 64
    rel = torch.zeros(n, h, w)
    rel[:, h // 2, w // 2] = 1.0  # unique top-1 pixel: the centre of every patch
    out = Occluder(strategy, p=1.0, top_k=1, k_patches=patches)(
        torch.zeros(n, 1, h, w), rel, generator=torch.Generator().manual_seed(15)
    )
    if patches > 1:  # overlapping patches: compare the union's area only with the literal union
        sizes = out.dropped.reshape(n, -1).float().mean(dim=1).numpy()
        rng = np.random.default_rng(0)
        lit = np.zeros(n)
        for i in range(n):
            mask = np.zeros((h, w), dtype=bool)
            for _ in range(patches):
                a = rng.uniform(0.02, 0.4) * h * w / patches
                r = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
                rh, rw = min(h, max(1, round(math.sqrt(a * r)))), min(w, max(1, round(math.sqrt(a / r))))
                top, left = h // 2 - rh // 2, w // 2 - rw // 2
                mask[max(0, top) : top + rh, max(0, left) : left + rw] = True
            lit[i] = mask.mean()
        assert scipy_stats.ks_2samp(sizes, lit).pvalue > 1e-3
        assert sizes.max() <= 0.4 / patches * 3.5  # each patch ~ area / k_patches
        return
    shapes = np.array([_is_rectangle(out.dropped[i]) for i in range(n)], dtype=float)
    area = shapes[:, 0] * shapes[:, 1] / (h * w)
    log_ratio = np.log(shapes[:, 0] / shapes[:, 1])
    lit_area, lit_ratio = _literal_rectangles(20000, h, w, np.random.default_rng(1))
    assert scipy_stats.ks_2samp(area, lit_area).pvalue > 1e-3
    assert scipy_stats.ks_2samp(log_ratio, lit_ratio).pvalue > 1e-3
    # and the headline numbers: mean area ~ 0.21 H W, quantiles of U(0.02, 0.4) (clipping rare)
    assert abs(area.mean() - 0.21) < 0.02
    q = np.quantile(area, [0.1, 0.5, 0.9])
    assert np.allclose(q, [0.058, 0.21, 0.362], atol=0.03)
    assert np.abs(log_ratio).max() <= math.log(1 / 0.3) + 0.15


# ---- fallback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["reldrop-pixel", "reldrop-block", "reldrop-patch"])
def test_unusable_relevance_falls_back(strategy):
    n, h, w = 6, 12, 12
    rel = torch.randn(n, h, w)
    rel[0, 3, 3] = float("nan")
    rel[1, 0, 0] = float("inf")
    rel[2] = 0.5  # constant
    rel[3, 1, 1] = -float("inf")
    applied = torch.tensor([True, True, True, True, True, False])
    rel[5] = float("nan")  # not applied: ignored, not counted
    out = Occluder(strategy)(torch.randn(n, 1, h, w), rel, applied=applied, generator=torch.Generator())
    assert out.fallback.tolist() == [True, True, True, True, False, False]
    assert out.dropped[:4].flatten(1).any(dim=1).all()  # the random variant occluded something
    assert torch.isfinite(out.inputs).all()


def test_pixel_fallback_budget():
    n, h, w = 400, 16, 16
    rel = torch.randn(n, h, w, generator=torch.Generator().manual_seed(16))
    rel[: n // 2] = float("nan")
    out = Occluder("reldrop-pixel", p=1.0)(torch.zeros(n, 1, h, w), rel, generator=torch.Generator())
    usable = out.dropped[n // 2 :].float().mean()
    fallen = out.dropped[: n // 2].float().mean()
    assert out.fallback.sum() == n // 2
    assert abs(float(fallen - usable)) < 0.02  # same expected budget
    # nothing usable at all: the budget is drop_rate
    out = Occluder("reldrop-pixel", p=1.0, drop_rate=0.1)(
        torch.zeros(n, 1, h, w), torch.zeros(n, h, w), generator=torch.Generator()
    )
    assert out.fallback.all() and abs(out.dropped.float().mean().item() - 0.1) < 0.01


# ---- configuration and bad input -------------------------------------------------------------


def test_defaults_from_reference():
    assert OcclusionConfig().alpha == 0.3 and OcclusionConfig().beta == 0.5
    points = OcclusionConfig(strategy="reldrop-points")
    assert (points.alpha, points.beta, points.fill, points.p) == (0.5, 0.5, "zero", 1.0)
    block = OcclusionConfig(strategy="reldrop-block")
    assert (block.top_k, block.coin, block.p) == (1, "batch", 0.5)
    assert OcclusionConfig().coin == "sample" and OcclusionConfig().p == 0.5
    assert OcclusionConfig(strategy="random-erasing").fill == "zero"
    with pytest.raises(TypeError):
        OcclusionConfig("reldrop-pixel")  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("name", ["p", "alpha", "beta", "drop_rate"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_probabilities_outside_unit_interval(name, value):
    with pytest.raises(ValueError, match=rf"{name}=.* is outside \[0, 1\]"):
        OcclusionConfig(**{name: value})


def test_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match=r"strategy='cutout' is unknown.*random-erasing.*reldrop-pixel"):
        Occluder("cutout")
    with pytest.raises(ValueError, match=r"fill='mean' is unknown.*blur.*constant.*noise.*zero"):
        Occluder("reldrop-pixel", fill="mean")
    with pytest.raises(ValueError, match=r"fill='blur' is unknown.*duplicate"):
        Occluder("reldrop-points", fill="blur")
    assert set(STRATEGIES) >= {"reldrop-pixel", "reldrop-block", "reldrop-patch", "reldrop-points"}


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"area": (0.5, 0.1)}, "area="),
        ({"area": (0.0, 0.1)}, "area="),
        ({"aspect": 1.5}, "aspect="),
        ({"k_patches": 0}, "k_patches="),
        ({"top_k": 0}, "top_k="),
        ({"noise_std": -1.0}, "noise_std"),
        ({"blur_sigma": 0.0}, "blur_sigma"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        OcclusionConfig(strategy="reldrop-patch", **kw)


def test_bad_call_arguments(images, clouds):
    with pytest.raises(ValueError, match=r"needs relevance of shape \(8, 16, 16\), got None"):
        Occluder("reldrop-pixel")(images)
    with pytest.raises(ValueError, match=r"needs relevance of shape \(8, 16, 16\), got \(8, 16\)"):
        Occluder("reldrop-pixel")(images, torch.zeros(8, 16))
    with pytest.raises(ValueError, match="works on .*image.* got points inputs"):
        Occluder("reldrop-block")(clouds, torch.zeros(6, 32))
    with pytest.raises(ValueError, match="works on .*points.* got image inputs"):
        Occluder("reldrop-points")(images, torch.zeros(8, 16, 16))
    with pytest.raises(ValueError, match=r"applied must be a bool tensor of shape \(8,\)"):
        Occluder("random-pixel")(images, applied=torch.ones(8))
    with pytest.raises(TypeError, match="floating-point"):
        Occluder("random-pixel")(images.to(torch.uint8))
    with pytest.raises(ValueError, match="rank 4"):
        Occluder("random-pixel")(images[0, 0])
    with pytest.raises(TypeError, match="OcclusionConfig or a name"):
        Occluder(3)  # type: ignore[arg-type]


def test_occluder_config_overrides():
    base = OcclusionConfig(strategy="reldrop-block", p=0.2)
    occ = Occluder(base, p=0.9)
    assert occ.config.p == 0.9 and occ.config.strategy == "reldrop-block" and base.p == 0.2
    assert occ.needs_relevance and not Occluder("random-erasing").needs_relevance


# ---- keyed per-sample randomness ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["reldrop-pixel", "reldrop-block", "reldrop-patch",
                                      "random-erasing", "random-pixel"])
def test_keyed_draws_do_not_depend_on_the_batch(strategy):
    from reldrop.keyed import sample_seeds

    n, h, w = 12, 10, 10
    g = torch.Generator().manual_seed(0)
    x, rel = torch.randn(n, 1, h, w, generator=g), torch.randn(n, h, w, generator=g)
    keys = [f"train-{i:05d}" for i in range(n)]
    occ = Occluder(strategy, p=0.6, coin="sample", fill="noise")
    full = occ(x, rel, seeds=sample_seeds(7, 2, keys))
    order = torch.randperm(n, generator=g)[:5]  # another batch: a subset, shuffled
    part = occ(x[order], rel[order], seeds=sample_seeds(7, 2, [keys[i] for i in order]))
    assert torch.equal(part.applied, full.applied[order])
    assert torch.equal(part.dropped, full.dropped[order])
    assert torch.equal(part.inputs, full.inputs[order])  # the noise fill too
    assert full.applied.any() and full.dropped.any()
    other = occ(x, rel, seeds=sample_seeds(7, 3, keys))  # next epoch: fresh draws
    assert not (torch.equal(other.applied, full.applied) and torch.equal(other.dropped, full.dropped))


def test_keyed_batch_coin_ignores_order_and_the_generator_api_still_works():
    from reldrop.keyed import sample_seed, sample_seeds

    assert sample_seed(1, 0, "a") == sample_seed(1, 0, "a") != sample_seed(1, 0, "b")
    assert sample_seed(1, 0, "a") != sample_seed(1, 1, "a") != sample_seed(2, 0, "a")
    occ = Occluder("reldrop-block", p=0.5)
    keys = [f"k{i}" for i in range(8)]
    seeds = sample_seeds(0, 0, keys)
    a = occ.select(8, seeds=seeds)
    b = occ.select(8, seeds=seeds.flip(0))
    assert torch.equal(a, b) and (bool(a.all()) or not bool(a.any()))
    both = {bool(occ.select(8, seeds=sample_seeds(0, e, keys))[0]) for e in range(40)}
    assert both == {True, False}
    with pytest.raises(ValueError, match="seeds has shape"):
        occ(torch.zeros(3, 1, 4, 4), torch.randn(3, 4, 4), applied=torch.ones(3, dtype=torch.bool),
            seeds=torch.zeros(2, dtype=torch.int64))


def test_reldrop_keys_reproduce_across_batches():
    from reldrop.augment import RelDrop
    from reldrop.models import build_model

    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, num_classes=10).eval()
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    keys = [f"s{i}" for i in range(6)]
    rd = RelDrop(model, "reldrop-pixel", p=0.7, seed=3)
    full = rd(x, y, keys=keys, epoch=1)
    part = RelDrop(model, "reldrop-pixel", p=0.7, seed=3)(x[[4, 1]], y[[4, 1]], keys=["s4", "s1"], epoch=1)
    assert torch.equal(part.dropped, full.dropped[[4, 1]])
    assert torch.equal(part.applied, full.applied[[4, 1]])


def test_unknown_draw_option_is_named() -> None:
    from reldrop.occlusion import Occluder

    with pytest.raises(TypeError, match=r"unknown option\(s\) \['seed'\]; known: "):
        Occluder("random-erasing", p=1.0)(torch.zeros(2, 1, 8, 8), seed=3)  # type: ignore[call-arg]
