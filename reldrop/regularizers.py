"""Explanation-guided training losses (trainer side), chosen by name.

A regularizer is a callable ``(model, inputs, targets, masks) -> RegularizedLoss``: ``inputs``
are normalised N x C x H x W floats, ``targets`` class indices, ``masks`` N x H x W (1 = region
of interest, e.g. the digit) or ``None``. ``loss`` is what the trainer backpropagates; ``ce``,
``penalty`` and ``logits`` are for logging and accuracy. ``m`` is the mask, ``o = 1 - m``.

- ``none``: cross-entropy.
- ``gradmask`` (Simpson et al. 2019, arXiv 1904.07478): CE + lambda * sum |d y_t / dx * o|.
- ``rrr`` (Ross et al. 2017, "Right for the right reasons", IJCAI):
  CE + lambda * sum (d sum_k log p_k / dx * o)^2.
- ``actdiff`` (Viviano et al. 2019, arXiv 1912.01042): CE + lambda * ||h(x) - h(x~)||_2, x~ = x
  with its out-of-mask pixels randomly permuted, h = ``model.embed``.
- ``isnet`` (Bassi et al. 2024, Nat. Commun. 15:291): (1 - P) CE + P * ISNet heatmap loss on a
  differentiable LRP-epsilon heatmap (see :func:`lrp_heatmap`); ``lam`` is P.
- ``classify-masked``: CE on :func:`mask_inputs` (the out-of-mask pixels set to the mean).

Penalties are per-sample sums over channels and pixels, averaged over the batch. The default
lambdas (``Regularizer.default_lambda``) bring each penalty to the order of the CE at the start
of training of the small CNN on 28 x 28 inputs normalised with std 0.5; they scale with the
number of pixels (gradmask, rrr) and with 1 / std (gradmask) or 1 / std^2 (rrr).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "REGULARIZERS",
    "ActDiff",
    "ClassifyMasked",
    "GradMask",
    "ISNet",
    "NoRegularizer",
    "RRR",
    "RegularizedLoss",
    "Regularizer",
    "check_masks",
    "isnet_heatmap_loss",
    "lrp_heatmap",
    "make_regularizer",
    "mask_inputs",
    "register_regularizer",
    "shuffle_outside",
]


@dataclass(frozen=True)
class RegularizedLoss:
    """``loss`` (total, differentiable) = combination of ``ce`` and ``penalty``; ``logits`` N x K."""

    loss: torch.Tensor
    ce: torch.Tensor
    penalty: torch.Tensor
    logits: torch.Tensor


def check_masks(
    masks: torch.Tensor, inputs: torch.Tensor, name: str = "masks"
) -> torch.Tensor:
    """Validate N x H x W ``masks`` against N x C x H x W ``inputs``; return them as float.

    Bool and integer masks become 0/1 (any non-zero value is inside); float masks are kept
    (soft masks in [0, 1] are allowed).
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    expected = (inputs.shape[0], *inputs.shape[2:])
    if inputs.ndim != 4 or tuple(masks.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(masks.shape)}; expected N x H x W = {expected} "
            f"for inputs of shape {tuple(inputs.shape)}"
        )
    masks = masks.to(inputs.device)
    if masks.dtype.is_floating_point:
        return masks.to(inputs.dtype)
    return (masks != 0).to(inputs.dtype)


def mask_inputs(inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``x * m`` in the space the model sees: out-of-mask pixels become 0 (= the data mean)."""
    return inputs * check_masks(masks, inputs).unsqueeze(1)


def shuffle_outside(
    inputs: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Permute, per sample, the pixel positions outside the mask (all channels move together).

    Pixels with mask value > 0.5 stay where they are (ActDiff's x~, Viviano et al. 2019).
    """
    n, c, h, w = inputs.shape
    inside = check_masks(masks, inputs).reshape(n, h * w) > 0.5
    position = torch.arange(h * w, device=inputs.device, dtype=inputs.dtype) / (h * w)
    noise = torch.rand((n, h * w), generator=generator).to(inputs.device, inputs.dtype)
    # out-of-mask positions sort first (in random order for the source, natural order for the
    # destination); in-mask positions sort last in natural order in both, so they map to themselves
    src = torch.argsort(torch.where(inside, 2 + position, noise), dim=1)
    dst = torch.argsort(torch.where(inside, 2 + position, position), dim=1)
    flat = inputs.reshape(n, c, h * w)
    gathered = flat.gather(2, src.unsqueeze(1).expand(n, c, h * w))
    out = torch.empty_like(flat).scatter(2, dst.unsqueeze(1).expand(n, c, h * w), gathered)
    return out.reshape(n, c, h, w)


def _embed_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits in one pass through ``model``'s own forward (so a DDP
    wrapper still synchronises gradients); models without ``return_embedding`` fall back to
    ``embed`` + ``head``/``fc``."""
    try:
        logits, h = model(x, return_embedding=True)
        return h, logits
    except TypeError:
        pass
    inner = model if hasattr(model, "embed") else getattr(model, "module", model)
    embed: Callable[[torch.Tensor], torch.Tensor] | None = getattr(inner, "embed", None)
    head: Callable[[torch.Tensor], torch.Tensor] | None = getattr(inner, "head", None)
    if head is None:
        head = getattr(inner, "fc", None)
    if not callable(embed) or head is None:
        raise TypeError(
            f"{type(inner).__name__} needs embed(x) and a head (or fc) layer for actdiff"
        )
    h = embed(x)
    return h, head(h)


# --- differentiable LRP for the ISNet loss -----------------------------------------------------


class _Phase:
    """Shared by one heatmap's ReLU nodes: True only while the explanation gradient is taken."""

    explaining = False


class _EpsilonReLU(torch.autograd.Function):
    """ReLU whose gradient is scaled by a / (a + eps) while explaining (LRP-epsilon as gradient x
    input), and is the true ReLU derivative otherwise.

    The switch matters for the parameter gradient of a heatmap loss: that backward pass also
    runs through these nodes (the heatmap depends on later layers' pre-activations), and there
    the forward values must be differentiated exactly; a fixed scaled derivative would be wrong
    (checked against finite differences in the tests).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, eps: float, phase: _Phase) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.eps = eps
        ctx.phase = phase
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (z,) = ctx.saved_tensors
        if ctx.phase.explaining:
            a = z.clamp(min=0)  # torch ops: recorded under create_graph, so s(z) is differentiable
            return grad * a / (a + ctx.eps), None, None
        return grad * (z > 0).to(grad.dtype), None, None


def _bn_detached_stats(
    module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor
) -> torch.Tensor:
    """BatchNorm as the affine map it computes on this batch, statistics held constant."""
    x = inp[0]
    bn: nn.modules.batchnorm._BatchNorm = module  # type: ignore[assignment]
    dims = [0] + list(range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.detach().mean(dim=dims).view(shape)
    var = x.detach().var(dim=dims, unbiased=False).view(shape)
    y = (x - mean) / torch.sqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


@contextmanager
def _lrp_mode(model: nn.Module, eps: float, bn_stats: str, phase: _Phase) -> Iterator[None]:
    """Hook ReLUs (epsilon scaling) and BatchNorms (frozen statistics, no running update)."""
    handles = []
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                saved.append((module, "inplace", module.inplace))
                module.inplace = False
                handles.append(
                    module.register_forward_hook(
                        lambda m, i, o: _EpsilonReLU.apply(i[0], eps, phase)  # type: ignore[misc]
                    )
                )
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                batch = bn_stats == "batch" and module.training
                saved.append((module, "training", module.training))
                module.training = False  # running stats untouched by this extra pass
                if batch:
                    handles.append(module.register_forward_hook(_bn_detached_stats))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, attr, value in saved:
            setattr(module, attr, value)


def lrp_heatmap(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float = 1e-2,
    bn_stats: Literal["batch", "running"] = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable LRP-epsilon heatmap (N x H x W, summed over channels) and the logits.

    Computed as gradient x input with every ``nn.ReLU``'s gradient scaled by a / (a + eps),
    which equals LRP-epsilon for ReLU networks (max-pool: winner takes all; average pool and
    residual sums: proportional, as zennit's Norm rule; BatchNorm merged into the preceding
    layer, as zennit's canonizers do). The first layer uses the same rule (no Flat / z^B), the
    output layer LRP-0. ``create_graph=True`` keeps the graph, so a loss on the heatmap trains
    the parameters. zennit's hooks are not used: their rules run on ``param.data`` copies, so no
    gradient reaches a layer's own weights through its relevance (checked: the last layer's
    gradient is ``None``), and in train mode the BatchNorm merge mixes running and batch
    statistics.

    BatchNorm: ``bn_stats="batch"`` (default, as the ISNet reference code) merges the
    statistics of the current batch when the module is training (running ones in eval),
    treated as constants; ``"running"`` always merges the running statistics (what
    :func:`reldrop.relevance.relevance` explains at evaluation time). Either way this extra
    forward does not update the running statistics.
    """
    if bn_stats not in ("batch", "running"):
        raise ValueError(f"bn_stats={bn_stats!r}; expected 'batch' or 'running'")
    if eps <= 0:
        raise ValueError(f"eps={eps}; expected > 0")
    x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
    phase = _Phase()
    with torch.enable_grad(), _lrp_mode(model, eps, bn_stats, phase):
        logits = model(x)
        chosen = logits.gather(1, targets.view(-1, 1)).sum()
        phase.explaining = True
        try:
            (grad,) = torch.autograd.grad(chosen, x, create_graph=True)
        finally:
            phase.explaining = False
    return (grad * x).sum(dim=1), logits


def _gwrp(values: torch.Tensor, d: float) -> torch.Tensor:
    """Global weighted rank pooling (Kolesnikov & Lampert 2016) over the last dimension."""
    ranked = values.sort(dim=-1, descending=True).values
    weights = d ** torch.arange(values.shape[-1], device=values.device, dtype=values.dtype)
    return (ranked * weights).sum(dim=-1) / weights.sum()


def isnet_heatmap_loss(
    heatmap: torch.Tensor,
    masks: torch.Tensor,
    *,
    E: float = 1.0,
    A: float = 1.0,
    B: float = 1.0,
    C1: float = 1.0,
    C2: float = 25.0,
    d: float = 0.9,
    stabilizer: float = 1e-10,
) -> torch.Tensor:
    """ISNet heatmap loss (Bassi et al. 2024), per sample then averaged over the batch.

    Background: |R| divided by its in-mask mean, its out-of-mask part pooled by GWRP (decay
    ``d``; d -> 1 is the plain mean) to b, loss ``A * log(1 + b / E)``. Foreground: F = sum of
    in-mask |R| (raw, in logit units) is kept within [C1, C2] by
    ``B * (relu(C1 - F)^2 / C1^2 + relu(F - C2)^2 / C2^2)`` so the background term cannot be
    met by shrinking every relevance (the reference code leaves the upper term unnormalised).
    """
    n = heatmap.shape[0]
    r = heatmap.abs().reshape(n, -1)
    m = masks.reshape(n, -1).to(r.dtype)
    roi_mean = (r * m).sum(1, keepdim=True) / (m.sum(1, keepdim=True) + stabilizer)
    normalised = r / (roi_mean + stabilizer)
    b = _gwrp(normalised * (1 - m), d)
    background = torch.log1p(b / E)
    fg = (r * m).sum(1)
    foreground = F.relu(C1 - fg) ** 2 / C1**2 + F.relu(fg - C2) ** 2 / C2**2
    return (A * background + B * foreground).mean()


# --- registry ----------------------------------------------------------------------------------

#: name -> Regularizer class
REGULARIZERS: dict[str, type[Regularizer]] = {}


def register_regularizer(name: str) -> Callable[[type[Regularizer]], type[Regularizer]]:
    """Register a :class:`Regularizer` subclass under ``name``."""

    def wrap(cls: type[Regularizer]) -> type[Regularizer]:
        cls.name = name
        REGULARIZERS[name] = cls
        return cls

    return wrap


class Regularizer:
    """Base: validates the batch, then computes :meth:`compute`. ``lam`` None = the default."""

    name: ClassVar[str] = ""
    requires_masks: ClassVar[bool] = True
    default_lambda: ClassVar[float | None] = None

    def __init__(self, *, lam: float | None = None) -> None:
        if self.default_lambda is None:
            if lam is not None:
                warnings.warn(
                    f"regularizer {self.name!r} has no weight; lam={lam} is ignored", stacklevel=3
                )
            self.lam = 0.0
        else:
            self.lam = float(self.default_lambda if lam is None else lam)
            if not self.lam >= 0:
                raise ValueError(f"lam={lam} for regularizer {self.name!r}; expected >= 0")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, lam={self.lam})"

    def __call__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> RegularizedLoss:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise ValueError(f"inputs must be N x C x H x W, got {shape}")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be normalised floats, got dtype {inputs.dtype}")
        targets = targets.to(inputs.device)
        m: torch.Tensor | None = None
        if masks is not None:
            m = check_masks(masks, inputs)
        elif self.requires_masks:
            raise ValueError(
                f"regularizer {self.name!r} needs region-of-interest masks, but the data has no "
                "'mask' (masks=None); use shards with a 'mask' per sample or regularizer 'none'"
            )
        return self.compute(model, inputs, targets, m)

    def compute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        masks: torch.Tensor | None,
    ) -> RegularizedLoss:
        raise NotImplementedError

    def _combine(
        self, ce: torch.Tensor, penalty: torch.Tensor, logits: torch.Tensor
    ) -> RegularizedLoss:
        return RegularizedLoss(loss=ce + self.lam * penalty, ce=ce, penalty=penalty, logits=logits)


def _input_grad(
    model: nn.Module, inputs: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and d score(logits) / d inputs, kept differentiable (double backprop)."""
    x = inputs.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(score(logits), x, create_graph=True)
    return logits, grad


@register_regularizer("none")
class NoRegularizer(Regularizer):
    """Plain cross-entropy."""

    requires_masks = False

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        logits = model(inputs)
        ce = F.cross_entropy(logits, targets)
        return RegularizedLoss(loss=ce, ce=ce, penalty=torch.zeros_like(ce), logits=logits)


@register_regularizer("gradmask")
class GradMask(Regularizer):
    """GradMask (Simpson et al. 2019) with the true-class logit for K classes.

    Default lambda 1: the paper gives no transferable value (the weight is tuned per task).
    """

    default_lambda = 1.0

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits, s = _input_grad(model, inputs, lambda y: y.gather(1, targets.view(-1, 1)).sum())
        penalty = (s * (1 - masks).unsqueeze(1)).abs().sum(dim=(1, 2, 3)).mean()
        return self._combine(F.cross_entropy(logits, targets), penalty, logits)


@register_regularizer("rrr")
class RRR(Regularizer):
    """Right for the Right Reasons (Ross et al. 2017).

    Default lambda 1000, the paper's value (there with [0, 1] pixels and an MLP). For the
    untrained small CNN on std-0.5 inputs the penalty starts near 1e-3, so 1000 puts it at
    about half the CE; it grows as the input gradients sharpen during training.
    """

    default_lambda = 1000.0

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits, s = _input_grad(model, inputs, lambda y: F.log_softmax(y, dim=1).sum())
        penalty = (s * (1 - masks).unsqueeze(1)).pow(2).sum(dim=(1, 2, 3)).mean()
        return self._combine(F.cross_entropy(logits, targets), penalty, logits)


@register_regularizer("actdiff")
class ActDiff(Regularizer):
    """Activation difference (Viviano et al. 2019): penultimate features invariant to the
    out-of-mask pixels, which are shuffled per sample (seeded generator ``seed``).

    Default lambda 1 (the paper tunes it; with ~1-scale features the penalty starts near 1).
    """

    default_lambda = 1.0

    def __init__(self, *, lam: float | None = None, seed: int | None = 0) -> None:
        super().__init__(lam=lam)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        h, logits = _embed_and_logits(model, inputs)
        h_shuffled, _ = _embed_and_logits(model, shuffle_outside(inputs, masks, self.generator))
        penalty = (h - h_shuffled).flatten(1).norm(dim=1).mean()
        return self._combine(F.cross_entropy(logits, targets), penalty, logits)


@register_regularizer("isnet")
class ISNet(Regularizer):
    """ISNet heatmap loss (Bassi et al. 2024): ``(1 - P) CE + P * heatmap_loss``; ``lam`` is P.

    The heatmap is the true-class LRP-epsilon map of :func:`lrp_heatmap` (eps 1e-2 as the
    ISNet code; ``bn_stats`` documents BatchNorm); the loss is :func:`isnet_heatmap_loss`.
    Defaults are the paper's: P 0.7, E 1, A 1, B 1, C1 1, C2 25, GWRP decay 0.9.
    """

    default_lambda = 0.7

    def __init__(
        self,
        *,
        lam: float | None = None,
        E: float = 1.0,
        A: float = 1.0,
        B: float = 1.0,
        C1: float = 1.0,
        C2: float = 25.0,
        d: float = 0.9,
        eps: float = 1e-2,
        bn_stats: Literal["batch", "running"] = "batch",
    ) -> None:
        super().__init__(lam=lam)
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam (P) = {self.lam} for regularizer 'isnet'; expected in [0, 1]")
        if E <= 0 or not 0 < C1 < C2 or not 0 < d <= 1:
            raise ValueError(f"isnet needs E > 0, 0 < C1 < C2 and 0 < d <= 1; got {E}, {C1}, "
                             f"{C2}, {d}")
        if bn_stats not in ("batch", "running"):
            raise ValueError(f"bn_stats={bn_stats!r}; expected 'batch' or 'running'")
        self.params = {"E": E, "A": A, "B": B, "C1": C1, "C2": C2, "d": d}
        self.eps = eps
        self.bn_stats: Literal["batch", "running"] = bn_stats

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits = model(inputs)
        heatmap, _ = lrp_heatmap(model, inputs, targets, eps=self.eps, bn_stats=self.bn_stats)
        penalty = isnet_heatmap_loss(heatmap, masks, **self.params)
        ce = F.cross_entropy(logits, targets)
        loss = (1 - self.lam) * ce + self.lam * penalty
        return RegularizedLoss(loss=loss, ce=ce, penalty=penalty, logits=logits)


@register_regularizer("classify-masked")
class ClassifyMasked(Regularizer):
    """Cross-entropy on :func:`mask_inputs` (a data transform; no weight). ``logits`` are those
    of the masked inputs."""

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits = model(inputs * masks.unsqueeze(1))
        ce = F.cross_entropy(logits, targets)
        return RegularizedLoss(loss=ce, ce=ce, penalty=torch.zeros_like(ce), logits=logits)


def make_regularizer(name: str, *, lam: float | None = None, **params: Any) -> Regularizer:
    """The regularizer ``name`` (see :data:`REGULARIZERS`) with weight ``lam`` (None = default)."""
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer={name!r} is unknown; known: {sorted(REGULARIZERS)}")
    try:
        return REGULARIZERS[name](lam=lam, **params)
    except TypeError as err:
        raise TypeError(f"regularizer {name!r}: bad parameters {sorted(params)} ({err})") from err
