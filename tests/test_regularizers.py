"""Regularizers against slow literal re-implementations, and their effect on a toy shortcut task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reldrop.models import build_model
from reldrop.regularizers import (
    REGULARIZERS,
    RegularizedLoss,
    lrp_heatmap,
    make_regularizer,
    mask_inputs,
    shuffle_outside,
)

K = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread (and do not fight other tests for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """conv -> ReLU -> linear -> ReLU (embed) -> head; optional BatchNorm after the conv."""

    def __init__(self, *, bn: bool = False, size: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2, 3, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(3))
        layers += [nn.ReLU(), nn.Flatten(), nn.Linear(3 * size * size, 6), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(6, K)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _batch(n: int = 4, size: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, size, size, generator=g)
    t = torch.randint(0, K, (n,), generator=g)
    m = torch.rand(n, size, size, generator=g) > 0.5
    return x, t, m


def _grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _pixel_sum(fn, s: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """sum over channels and pixels of fn(s[c, h, w] * o[h, w]), one element at a time."""
    total = torch.zeros(())
    for c in range(s.shape[0]):
        for h in range(s.shape[1]):
            for w in range(s.shape[2]):
                total = total + fn(s[c, h, w] * o[h, w])
    return total


def _literal_input_grad_loss(model, x, t, m, lam, score, fn, reduce=torch.mean):
    ces, pens = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        yi = model(xi)
        (s,) = torch.autograd.grad(score(yi, t[i]), xi, create_graph=True)
        ces.append(F.cross_entropy(yi, t[i : i + 1]))
        pens.append(_pixel_sum(fn, s[0], 1 - m[i].float()))
    ce, pen = torch.stack(ces).mean(), reduce(torch.stack(pens))
    return ce + lam * pen, pen


@pytest.mark.parametrize("name", ["gradmask", "rrr"])
def test_input_gradient_losses_match_literal(name: str) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    x, t, m = _batch()
    reg = make_regularizer(name, lam=0.3)
    out = reg(model, x, t, m)
    assert isinstance(out, RegularizedLoss)
    reduce = torch.mean
    if name == "gradmask":  # contrast y_t - log sum_{k != t} exp y_k, L1 summed over the batch
        def score(y, ti):
            others = [y[0, k] for k in range(K) if k != ti]
            return y[0, ti] - torch.log(sum(torch.exp(v) for v in others))
        fn, reduce = torch.abs, torch.sum
    else:
        score = lambda y, ti: F.log_softmax(y, dim=1).sum()  # noqa: E731
        fn = torch.square
    loss, pen = _literal_input_grad_loss(model, x, t, m, 0.3, score, fn, reduce)
    torch.testing.assert_close(out.penalty, pen)
    torch.testing.assert_close(out.loss, loss)
    _close(_grads(out.loss, model), _grads(loss, model))


def test_shuffle_outside_permutes_only_outside() -> None:
    x, _, m = _batch(n=3, size=6)
    y = shuffle_outside(x, m, torch.Generator().manual_seed(1))
    assert torch.equal(y[m.unsqueeze(1).expand_as(x)], x[m.unsqueeze(1).expand_as(x)])
    changed = False
    for i in range(3):
        out = ~m[i]
        before = x[i][:, out]  # C x (number outside); columns move together across channels
        after = y[i][:, out]
        key = lambda cols: sorted(map(tuple, cols.T.tolist()))  # noqa: E731
        assert key(before) == key(after)
        changed |= not torch.equal(before, after)
    assert changed


def test_actdiff_matches_literal() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    x, t, m = _batch()
    out = make_regularizer("actdiff", lam=0.5, seed=7)(model, x, t, m)
    x_tilde = shuffle_outside(x, m, torch.Generator().manual_seed(7))
    ces, dists = [], []
    for i in range(x.shape[0]):
        h, h2 = model.embed(x[i : i + 1])[0], model.embed(x_tilde[i : i + 1])[0]
        ces.append(F.cross_entropy(model.head(h)[None], t[i : i + 1]))
        dists.append(torch.sqrt(sum((h[j] - h2[j]) ** 2 for j in range(h.shape[0]))))
    loss = torch.stack(ces).mean() + 0.5 * torch.stack(dists).mean()
    torch.testing.assert_close(out.loss, loss)
    _close(_grads(out.loss, model), _grads(loss, model))


def _literal_lrp(model: TinyNet, x: torch.Tensor, t: torch.Tensor, eps: float,
                 zb: tuple[float, float] | None = None) -> torch.Tensor:
    """Layer by layer LRP-epsilon (LRP-0 at the output; z^B at the first layer with bounds
    ``zb``), BatchNorm merged with the (detached) batch statistics, one sample at a time."""
    conv, bn, lin = model.features[0], model.features[1], model.features[4]
    with torch.no_grad():
        pre = F.conv2d(x, conv.weight, conv.bias, padding=1)
        mean, var = pre.mean(dim=(0, 2, 3)), pre.var(dim=(0, 2, 3), unbiased=False)
    scale = bn.weight / torch.sqrt(var + bn.eps)
    w1 = conv.weight * scale.view(-1, 1, 1, 1)
    b1 = (conv.bias - mean) * scale + bn.bias
    maps = []
    for i in range(x.shape[0]):
        a0 = x[i : i + 1]
        z1 = F.conv2d(a0, w1, b1, padding=1)
        a1 = z1.clamp(min=0).flatten(1)
        z2 = a1 @ lin.weight.T + lin.bias
        a2 = z2.clamp(min=0)
        r2 = a2 * model.head.weight[t[i]]  # LRP-0 at the output: R_j = a_j w_jt
        r1 = a1 * ((r2 / (z2 + eps * torch.where(z2 >= 0, 1.0, -1.0))) @ lin.weight)
        if zb is None:
            s1 = r1.view_as(z1) / (z1 + eps * torch.where(z1 >= 0, 1.0, -1.0))
            r0 = a0 * F.conv_transpose2d(s1, w1, padding=1)
        else:
            lo, hi = torch.full_like(a0, zb[0]), torch.full_like(a0, zb[1])
            wp, wn = w1.clamp(min=0), w1.clamp(max=0)
            z = (F.conv2d(a0, w1, padding=1) - F.conv2d(lo, wp, padding=1)
                 - F.conv2d(hi, wn, padding=1))
            s1 = r1.view_as(z1) / z
            r0 = (a0 * F.conv_transpose2d(s1, w1, padding=1)
                  - lo * F.conv_transpose2d(s1, wp, padding=1)
                  - hi * F.conv_transpose2d(s1, wn, padding=1))
        maps.append(r0.sum(dim=1)[0])
    return torch.stack(maps)


def _literal_isnet_penalty(r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    E, A, B, C1, C2, d = 1.0, 1.0, 3.0, 1.0, 25.0, 0.9
    losses = []
    for i in range(r.shape[0]):
        cells = [(abs(r[i, h, w]), float(m[i, h, w])) for h in range(r.shape[1])
                 for w in range(r.shape[2])]
        inside = [v for v, mm in cells if mm]
        roi_mean = sum(inside) / len(inside)
        bkg = sorted([v / roi_mean * (1 - mm) for v, mm in cells], key=lambda v: v.detach().item(), reverse=True)
        weights = [d**k for k in range(len(bkg))]
        b = sum(w * v for w, v in zip(weights, bkg)) / sum(weights)
        fg = sum(inside)
        low = torch.clamp(C1 - fg, min=0) ** 2 / C1**2
        high = torch.clamp(fg - C2, min=0) ** 2 / C1**2  # C1^2 above C2 too (reference)
        losses.append(A * torch.log(1 + b / E) + B * (low + high))
    return torch.stack(losses).mean()


def test_lrp_heatmap_matches_literal_lrp_epsilon_with_bn() -> None:
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    with torch.no_grad():
        model.features[1].weight.uniform_(0.5, 2)
        model.features[1].bias.uniform_(-0.3, 0.3)
    x, t, _ = _batch(n=5)
    running = model.features[1].running_mean.clone()
    heat, _ = lrp_heatmap(model, x, t, eps=0.05)
    assert torch.equal(model.features[1].running_mean, running)  # no running-stat update
    assert model.features[2].inplace is False and model.training
    torch.testing.assert_close(heat, _literal_lrp(model, x, t, 0.05))
    # differentiable w.r.t. every parameter, including the head's
    _close(_grads(heat.abs().sum(), model), _grads(_literal_lrp(model, x, t, 0.05).abs().sum(),
                                                   model))


def test_isnet_matches_literal() -> None:
    torch.manual_seed(1)
    model = TinyNet(bn=True)
    x, t, m = _batch(n=4)
    out = make_regularizer("isnet", classes="label", first_layer="epsilon")(model, x, t, m)
    heat = _literal_lrp(model, x, t, 1e-2)
    pen = _literal_isnet_penalty(heat, m)
    ce = F.cross_entropy(model(x), t)
    loss = 0.3 * ce + 0.7 * pen
    torch.testing.assert_close(out.penalty, pen)
    torch.testing.assert_close(out.loss, loss)
    for ga, gb in zip(_grads(out.loss, model), _grads(loss, model), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_zennit_composite_path_gives_no_gradient_to_the_head() -> None:
    """Why isnet does not use reldrop.relevance.attribution: zennit's rules use param.data."""
    from reldrop.relevance import attribution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(50, 6), nn.ReLU(), nn.Linear(6, K))
    x, t, _ = _batch()
    attr, _ = attribution(model, x, t, create_graph=True)
    grads = torch.autograd.grad(attr.abs().sum(), list(model.parameters()), allow_unused=True)
    assert grads[-1] is None and grads[-2] is None


def test_classify_masked_and_none() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    x, t, m = _batch()
    xm = torch.where(m.unsqueeze(1), x, torch.zeros(()))
    torch.testing.assert_close(mask_inputs(x, m), xm)
    out = make_regularizer("classify-masked", background="mean")(model, x, t, m)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(xm), t))
    # default: black, the normalised value of pixel 0 (bounds[0]; MNIST-like mean 0.13, std 0.31)
    black = (0.0 - 0.13) / 0.31
    out = make_regularizer("classify-masked", bounds=(black, (1 - 0.13) / 0.31))(model, x, t, m)
    xb = torch.where(m.unsqueeze(1), x, torch.full((), black))
    torch.testing.assert_close(out.loss, F.cross_entropy(model(xb), t))
    # without bounds: the batch's per-channel minimum
    out = make_regularizer("classify-masked")(model, x, t, m)
    low = x.transpose(0, 1).reshape(2, -1).min(dim=1).values.view(1, 2, 1, 1)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(torch.where(m.unsqueeze(1), x, low)), t))
    plain = make_regularizer("none")(model, x, t, None)
    torch.testing.assert_close(plain.loss, F.cross_entropy(model(x), t))
    assert float(plain.penalty.detach()) == 0.0


def test_registry_and_errors() -> None:
    assert set(REGULARIZERS) == {"none", "gradmask", "rrr", "actdiff", "isnet", "classify-masked"}
    x, t, _ = _batch()
    for name, cls in REGULARIZERS.items():
        assert cls.requires_masks == (name != "none")
        if cls.requires_masks:
            with pytest.raises(ValueError, match=f"'{name}'.*mask"):
                make_regularizer(name)(TinyNet(), x, t, None)
    with pytest.raises(ValueError, match="unknown"):
        make_regularizer("nope")
    with pytest.raises(ValueError, match="lam"):
        make_regularizer("gradmask", lam=-1.0)
    with pytest.raises(ValueError, match="P"):
        make_regularizer("isnet", lam=1.5)
    with pytest.raises(TypeError, match="gradmask"):
        make_regularizer("gradmask", bogus=1)
    with pytest.warns(UserWarning, match="ignored"):
        make_regularizer("none", lam=1.0)
    with pytest.raises(ValueError, match="shape"):
        make_regularizer("gradmask")(TinyNet(), x, t, torch.ones(4, 3, 3))
    assert make_regularizer("rrr").lam == REGULARIZERS["rrr"].default_lambda


def test_regularizers_run_on_real_models() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=1, num_classes=10)
    model.train()
    x = torch.randn(4, 1, 12, 12)
    t = torch.tensor([0, 1, 2, 3])
    m = torch.zeros(4, 12, 12, dtype=torch.uint8)
    m[:, 3:9, 3:9] = 1
    for name in REGULARIZERS:
        out = make_regularizer(name)(model, x, t, m)
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.logits.shape == (4, 10)
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()


# --- toy shortcut task -------------------------------------------------------------------------

SIZE = 8


def _toy(n: int, seed: int):
    """Class sign in a faint 4 x 4 centre (the mask) and, perfectly, in a bright corner."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float().view(n, 1, 1)
    x = 0.5 * torch.randn(n, SIZE, SIZE, generator=g)
    x[:, 2:6, 2:6] += 0.5 * s
    x[:, 0:2, 0:2] = 2.0 * s
    m = torch.zeros(n, SIZE, SIZE)
    m[:, 2:6, 2:6] = 1
    return x.unsqueeze(1), y, m


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _share_inside(model: nn.Module, x, y, m) -> float:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, y.view(-1, 1)).sum(), x)
    g = g.abs().sum(dim=1)
    return float((g * m).sum() / g.sum())


def _train(name: str, lam: float | None, steps: int = 150) -> float:
    torch.manual_seed(0)
    model = _MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    reg = make_regularizer(name, lam=lam) if name != "none" else make_regularizer("none")
    x, y, m = _toy(256, seed=0)
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % 256
        out = reg(model, x[idx], y[idx], m[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return _share_inside(model, *_toy(128, seed=1))


def test_regularizers_move_gradients_into_the_mask() -> None:
    baseline = _train("none", None)
    lams = {"gradmask": 0.2, "rrr": 10.0, "actdiff": 1.0, "isnet": None, "classify-masked": None}
    shares = {name: _train(name, lam) for name, lam in lams.items()}
    for name, share in shares.items():
        assert share > baseline + 0.15, (name, share, baseline)


def test_actdiff_all_layers_matches_the_reference_compare_activations() -> None:
    """``layers="all"``: the mean, over every pre-activation row (each conv map's rows, each
    linear vector), of the L2 distance along the last dimension (PairwiseDistance, eps 1e-6)."""
    torch.manual_seed(0)
    model = TinyNet()
    x, t, m = _batch()
    out = make_regularizer("actdiff", lam=0.5, seed=7, layers="all")(model, x, t, m)
    x_tilde = shuffle_outside(x, m, torch.Generator().manual_seed(7))
    conv, linear = model.features[0], model.features[3]

    def rows(v: torch.Tensor) -> list[torch.Tensor]:
        a = conv(v)
        b = linear(torch.relu(a).flatten(1))
        return [a[i, c, h] for i in range(v.shape[0]) for c in range(a.shape[1])
                for h in range(a.shape[2])] + [b[i] for i in range(v.shape[0])]

    dists = [torch.sqrt(((r1 - r2 + 1e-6) ** 2).sum()) for r1, r2 in zip(rows(x), rows(x_tilde))]
    assert len(dists) == 4 * 3 * 5 + 4
    loss = F.cross_entropy(model(x), t) + 0.5 * torch.stack(dists).mean()
    torch.testing.assert_close(out.loss, loss)
    _close(_grads(out.loss, model), _grads(loss, model))
    with pytest.raises(ValueError, match="layers='deep'"):
        make_regularizer("actdiff", layers="deep")


def test_actdiff_all_layers_copies_in_place_relu_inputs() -> None:
    from reldrop.regularizers import relu_inputs_and_logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(75, K))
    x, _, _ = _batch()
    acts, logits = relu_inputs_and_logits(model, x)
    torch.testing.assert_close(acts[0], model[0](x))
    assert float(acts[0].detach().min()) < 0  # taken before the in-place ReLU clipped it
    torch.testing.assert_close(logits, model(x))
    with pytest.raises(TypeError, match="no nn.ReLU"):
        relu_inputs_and_logits(nn.Sequential(nn.Flatten(), nn.Linear(50, K)), x)


def test_isnet_and_actdiff_on_resnet() -> None:
    """In-place ReLUs, residual sums and an ``fc`` head; modes and flags restored."""
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, num_classes=4)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 3])
    m = torch.zeros(2, 8, 8)
    m[:, 2:6, 2:6] = 1
    for name, params in (("isnet", {}), ("actdiff", {}), ("actdiff", {"layers": "all"})):
        out = make_regularizer(name, **params)(model, x, t, m)
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.conv1.weight.grad is not None
        model.zero_grad()
    assert model.relu.inplace and model.training and model.bn1.training


# --- pinned reference formulas -----------------------------------------------------------------


class _Shortcut(nn.Module):
    """Two logits: y0 reads the mask pixel, y1 reads (only) the shortcut pixel outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 10.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def test_gradmask_contrast_penalises_a_shortcut_on_another_logit() -> None:
    model = _Shortcut()
    x = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.5]]]])  # N x 1 x 1 x 2: [roi pixel, shortcut]
    t = torch.tensor([0, 0])
    m = torch.tensor([[[1, 0]], [[1, 0]]])
    # contrast y0 - y1 (two classes): gradient on the shortcut pixel is -10 per sample -> 20
    contrast = make_regularizer("gradmask", lam=1.0)(model, x, t, m)
    assert float(contrast.penalty.detach()) == pytest.approx(20.0)
    # true-class logit y0 ignores the shortcut entirely: penalty 0
    true_class = make_regularizer("gradmask", lam=1.0, target="true-class")(model, x, t, m)
    assert float(true_class.penalty.detach()) == 0.0


def test_gradmask_original_form_squares_positive_samples_and_ramps() -> None:
    model = _Shortcut()
    x = torch.ones(2, 1, 1, 2)
    t = torch.tensor([0, 0])
    m = torch.tensor([[[1, 0]], [[0, 0]]])  # second sample has no mask: not penalised
    reg = make_regularizer("gradmask", lam=4.0, form="original", ramp_steps=4)
    out = reg(model, x, t, m)
    # only sample 0 outside-mask pixels count; the empty-mask sample is skipped: 10^2 + 0 = 100
    assert float(out.penalty.detach()) == pytest.approx(100.0)
    assert float((out.loss - out.ce).detach()) == pytest.approx(1.0 * 100.0)  # lambda ramped: 4 * 1/4
    out = reg(model, x, t, m)
    assert float((out.loss - out.ce).detach()) == pytest.approx(2.0 * 100.0)


@pytest.mark.parametrize(("fg", "expected"), [(0.5, 3 * 0.25), (10.0, 0.0), (30.0, 3 * 25.0)])
def test_isnet_foreground_terms(fg: float, expected: float) -> None:
    """B (relu(C1 - F)^2 + relu(F - C2)^2) / C1^2 with B 3, C1 1, C2 25; background 0."""
    from reldrop.regularizers import isnet_heatmap_loss

    heat = torch.zeros(1, 2, 2)
    heat[0, 0, 0] = fg
    m = torch.zeros(1, 2, 2)
    m[0, 0, 0] = 1
    assert float(isnet_heatmap_loss(heat, m)) == pytest.approx(expected)


def test_isnet_zb_first_layer_matches_literal() -> None:
    torch.manual_seed(1)
    model = TinyNet(bn=True)
    x, t, _ = _batch(n=4)
    bounds = (-3.0, 3.0)
    heat, _ = lrp_heatmap(model, x, t, first_layer="zb", bounds=bounds)
    literal = _literal_lrp(model, x, t, 1e-2, zb=bounds)
    torch.testing.assert_close(heat, literal, rtol=1e-4, atol=1e-5)
    _close(_grads(heat.abs().sum(), model), _grads(literal.abs().sum(), model))


def test_isnet_all_classes_is_the_mean_over_class_heatmaps() -> None:
    from reldrop.regularizers import isnet_heatmap_loss

    torch.manual_seed(2)
    model = TinyNet(bn=False)
    x, t, m = _batch(n=3)
    out = make_regularizer("isnet")(model, x, t, m)  # defaults: all classes, z^B
    pens = [isnet_heatmap_loss(lrp_heatmap(model, x, torch.full_like(t, k), first_layer="zb")[0], m)
            for k in range(K)]
    torch.testing.assert_close(out.penalty, torch.stack(pens).mean())


def test_isnet_and_input_gradient_penalties_clip_others_do_not() -> None:
    model = TinyNet()
    x, t, m = _batch()
    isnet = make_regularizer("isnet")
    assert isnet.clip_grad_norm == 1.0 and make_regularizer("actdiff").clip_grad_norm is None
    # issue 24: gradmask and rrr clip at 1.0 by default (they diverged under SGD without)
    assert make_regularizer("gradmask").clip_grad_norm == make_regularizer("rrr").clip_grad_norm == 1.0
    out = isnet(model, x, t, m)
    (out.loss * 1e4).backward()
    before = isnet.clip_gradients(model)
    after = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert before is not None and before > 1.0 and float(after) == pytest.approx(1.0, rel=1e-4)
    assert make_regularizer("rrr", clip_grad_norm=None).clip_gradients(model) is None
    assert make_regularizer("isnet", clip_grad_norm=None).clip_grad_norm is None


def test_actdiff_on_a_plain_module_uses_the_last_linear_input() -> None:
    from reldrop.regularizers import penultimate_and_logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(50, 7), nn.ReLU(), nn.Linear(7, K))
    x, t, m = _batch()
    h, logits = penultimate_and_logits(model, x)
    torch.testing.assert_close(h, model[:3](x))
    torch.testing.assert_close(logits, model(x))
    out = make_regularizer("actdiff")(model, x, t, m)
    assert float(out.penalty.detach()) > 0
    with pytest.raises(TypeError, match="return_embedding"):
        penultimate_and_logits(nn.Sequential(nn.Conv2d(2, 1, 1), nn.Flatten()), x)
