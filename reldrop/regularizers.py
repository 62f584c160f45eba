"""Explanation-guided training losses (trainer side), chosen by name.

A regularizer is a callable ``(model, inputs, targets, masks) -> RegularizedLoss``: ``inputs``
are normalised N x C x H x W floats, ``targets`` class indices, ``masks`` N x H x W (1 = region
of interest, e.g. the digit) or ``None``. ``loss`` is what the trainer backpropagates; ``ce``,
``penalty`` and ``logits`` are for logging and accuracy. ``m`` is the mask, ``o = 1 - m``.
Every regularizer works with any ``nn.Module`` returning logits; after ``loss.backward()`` the
trainer calls :meth:`Regularizer.clip_gradients` (a no-op unless the method clips, as ISNet).

Defaults follow each method's reference code; every deviation is a named option:

- ``none``: cross-entropy.
- ``gradmask`` (Simpson et al. 2019, arXiv 1904.07478; the L1 form of Viviano et al. 2019):
  CE + lambda * sum_batch sum |d c / dx * o| with the logit **contrast**
  c = y_t - logsumexp_{k != t} y_k (for two classes y_t - y_other: the reference's
  d|y0 - y1|/dx up to a sign the L1 norm drops). ``target="true-class"`` uses y_t alone (misses a
  shortcut that drives only another logit); ``form="original"`` is GradMask's own code: the
  squared term, on samples with a non-empty mask only, lambda ramped up linearly.
- ``rrr`` (Ross et al. 2017, "Right for the right reasons", IJCAI):
  CE + lambda * sum (d sum_k log p_k / dx * o)^2 (per sample, averaged over the batch).
- ``actdiff`` (Viviano et al. 2019, arXiv 1910.00199): CE + lambda * mean ||h(x) - h(x~)||_2,
  x~ = x with its out-of-mask pixels randomly permuted, h = the penultimate features
  (:func:`penultimate_and_logits`); ``layers="all"``: the pre-activations of every layer, as
  the reference's earlier CNN (:func:`relu_inputs_and_logits`).
- ``isnet`` (Bassi et al. 2024, Nat. Commun. 15:291): (1 - P) CE + P * ISNet heatmap loss on
  differentiable LRP heatmaps of every class (see :func:`lrp_heatmap`); ``lam`` is P; gradient
  norm clipped at 1.0 (the reference's; ``gradmask`` and ``rrr`` clip at 1.0 too, a deviation
  that keeps SGD stable: see :class:`GradMask`).
- ``classify-masked``: CE on :func:`mask_inputs` with the background set to black (pixel 0).

Regularizers that need the input range (``classify-masked``'s black, ISNet's z^B first layer)
take ``bounds=(low, high)``: the normalised values of pixel 0 and 1 (``Normalization.bounds()``);
without it they use the per-channel minimum and maximum of the batch.
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

from reldrop.registry import Registry

__all__ = [
    "REGULARIZERS",
    "ActDiff",
    "ClassifyMasked",
    "GradMask",
    "HeatmapLoss",
    "ISNet",
    "NoRegularizer",
    "RRR",
    "RegularizedLoss",
    "Regularizer",
    "check_masks",
    "isnet_heatmap_loss",
    "logit_contrast",
    "lrp_heatmap",
    "make_regularizer",
    "mask_inputs",
    "penultimate_and_logits",
    "register_regularizer",
    "relu_inputs_and_logits",
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


def mask_inputs(
    inputs: torch.Tensor, masks: torch.Tensor, background: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """``m * x + (1 - m) * background`` in the space the model sees (``background`` a scalar or
    broadcastable per channel, e.g. 1 x C x 1 x 1; 0 = the data mean)."""
    m = check_masks(masks, inputs).unsqueeze(1)
    return inputs * m + (1 - m) * background


def _low_high(
    inputs: torch.Tensor, bounds: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) as 1 x C x 1 x 1 tensors: ``bounds`` or the batch's per-channel min / max."""
    if bounds is not None:
        low = torch.full((1, inputs.shape[1], 1, 1), float(bounds[0]), dtype=inputs.dtype)
        high = torch.full((1, inputs.shape[1], 1, 1), float(bounds[1]), dtype=inputs.dtype)
        return low.to(inputs.device), high.to(inputs.device)
    flat = inputs.detach().transpose(0, 1).reshape(inputs.shape[1], -1)
    shape = (1, -1, 1, 1)
    return flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)


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


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise TypeError(
            f"{type(model).__name__} has no forward(x, return_embedding=True) and no nn.Linear "
            "layer; actdiff needs penultimate features: add return_embedding to its forward"
        )
    return last


def penultimate_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits in one pass through ``model``'s own forward (so a DDP
    wrapper still synchronises gradients).

    Models whose ``forward(x, return_embedding=True)`` returns ``(logits, features)`` (every
    model in :mod:`reldrop.models`) give their own features; any other ``nn.Module`` gives the
    (flattened) input of its last ``nn.Linear``, captured by a forward hook.
    """
    try:
        logits, h = model(x, return_embedding=True)
        return h, logits
    except TypeError:
        pass
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


def relu_inputs_and_logits(
    model: nn.Module, x: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The input of every ``nn.ReLU`` call (the pre-activations, in call order) and the logits,
    from one pass through ``model``'s own forward."""
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        # an in-place ReLU overwrites its input: keep a copy taken before it does
        captured.append(inputs[0].clone() if getattr(module, "inplace", False) else inputs[0])

    handles = [m.register_forward_pre_hook(keep) for m in model.modules() if isinstance(m, nn.ReLU)]
    if not handles:
        raise TypeError(f"{type(model).__name__} has no nn.ReLU module; actdiff layers='all' "
                        "compares the inputs of its ReLUs: use layers='penultimate'")
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured, logits


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


def _first_layers(model: nn.Module) -> tuple[nn.Conv2d | nn.Linear, nn.Module | None]:
    """The first ``nn.Conv2d`` / ``nn.Linear`` and the BatchNorm right after it (or None)."""
    modules = list(model.modules())
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d | nn.Linear):
            after = modules[i + 1] if i + 1 < len(modules) else None
            bn = after if isinstance(after, nn.modules.batchnorm._BatchNorm) else None
            return module, bn
    raise TypeError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer for the z^B rule")


def _merged_weight(
    layer: nn.Conv2d | nn.Linear, bn: nn.Module | None, layer_out: torch.Tensor, bn_stats: str
) -> torch.Tensor:
    """The first layer's weight with a following BatchNorm merged in (statistics constant)."""
    if bn is None:
        return layer.weight
    norm: nn.modules.batchnorm._BatchNorm = bn  # type: ignore[assignment]
    if bn_stats == "batch" and norm.training:
        dims = [0] + list(range(2, layer_out.ndim))
        var = layer_out.detach().var(dim=dims, unbiased=False)
    else:
        assert norm.running_var is not None
        var = norm.running_var
    scale = 1 / torch.sqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    return layer.weight * scale.view(-1, *([1] * (layer.weight.ndim - 1)))


def _apply_weight(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, None)
    return F.linear(x, weight)


def _zb_relevance(
    layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, x: torch.Tensor,
    out_relevance: torch.Tensor, low: torch.Tensor, high: torch.Tensor, stabilizer: float = 1e-9,
) -> torch.Tensor:
    """z^B rule (Montavon et al. 2017) through ``layer`` with ``weight``: R_i = sum_j (x_i w_ij
    - l_i w+_ij - h_i w-_ij) / z^B_j R_j, differentiable in the parameters (no bias)."""
    lo = low.expand_as(x).detach().requires_grad_(True)
    hi = high.expand_as(x).detach().requires_grad_(True)
    zb = _apply_weight(layer, x, weight) - _apply_weight(layer, lo, weight.clamp(min=0)) - (
        _apply_weight(layer, hi, weight.clamp(max=0))
    )
    s = out_relevance / (zb + stabilizer)
    gx, gl, gh = torch.autograd.grad(zb, (x, lo, hi), grad_outputs=s, create_graph=True)
    return x * gx + lo * gl + hi * gh


def lrp_heatmap(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float = 1e-2,
    bn_stats: Literal["batch", "running"] = "batch",
    first_layer: Literal["zb", "epsilon"] = "epsilon",
    bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable LRP-epsilon heatmap (N x H x W, summed over channels) and the logits.

    Computed as gradient x input with every ``nn.ReLU``'s gradient scaled by a / (a + eps),
    which equals LRP-epsilon for ReLU networks (max-pool: winner takes all; average pool and
    residual sums: proportional, as zennit's Norm rule; BatchNorm merged into the preceding
    layer, as zennit's canonizers do). The output layer is LRP-0. The first layer
    (the first ``nn.Conv2d`` / ``nn.Linear``, which must take ``inputs`` directly) uses the same
    rule (``first_layer="epsilon"``) or z^B with the input range ``bounds`` (default: the
    batch's per-channel min / max), as the ISNet reference. ``create_graph=True`` keeps the
    graph, so a loss on the heatmap trains the parameters. zennit's hooks are not used: their
    rules run on ``param.data`` copies, so no gradient reaches a layer's own weights through its
    relevance, and in train mode the BatchNorm merge mixes running and batch statistics.

    BatchNorm: ``bn_stats="batch"`` (default, as the ISNet reference code) merges the
    statistics of the current batch when the module is training (running ones in eval),
    treated as constants; ``"running"`` always merges the running statistics. Either way this
    extra forward does not update the running statistics.
    """
    if bn_stats not in ("batch", "running"):
        raise ValueError(f"bn_stats={bn_stats!r}; expected 'batch' or 'running'")
    if first_layer not in ("zb", "epsilon"):
        raise ValueError(f"first_layer={first_layer!r}; expected 'zb' or 'epsilon'")
    if eps <= 0:
        raise ValueError(f"eps={eps}; expected > 0")
    x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
    phase = _Phase()
    with torch.enable_grad(), _lrp_mode(model, eps, bn_stats, phase):
        if first_layer == "epsilon":
            logits = model(x)
            return (_explained_grad(logits, targets, x, phase) * x).sum(dim=1), logits
        return _zb_heatmap(model, x, targets, eps, bn_stats, phase, bounds)


def _explained_grad(
    logits: torch.Tensor, targets: torch.Tensor, wrt: torch.Tensor, phase: _Phase
) -> torch.Tensor:
    """d(sum of the target logits)/d(``wrt``), graph kept, taken in the explaining phase (the
    LRP hooks active)."""
    phase.explaining = True
    try:
        chosen = logits.gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, wrt, create_graph=True)
    finally:
        phase.explaining = False
    return grad


def _zb_heatmap(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, eps: float, bn_stats: str,
    phase: _Phase, bounds: tuple[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lrp_heatmap` with z^B on the first layer (+ its BatchNorm), which must be followed
    by a ReLU: the relevance reaching that ReLU's output is R = a * dy/da, recovered from the
    epsilon-scaled gradient g at its input as g * (a + eps)."""
    layer, bn = _first_layers(model)
    seen: dict[str, torch.Tensor] = {}

    def keep_layer(module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["in"], seen["layer"] = inp[0], out

    def keep_out(module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["out"] = out  # registered after _lrp_mode's BatchNorm hook: sees its output

    handles = [layer.register_forward_hook(keep_layer),
               (bn if bn is not None else layer).register_forward_hook(keep_out)]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    first_in, out = seen["in"], seen["out"]
    if first_in.numel() != x.numel():
        raise TypeError("first_layer='zb' needs the first Conv2d/Linear to see the model input "
                        "(or a reshape of it); use first_layer='epsilon'")
    relevance = _explained_grad(logits, targets, out, phase) * (out.clamp(min=0) + eps)
    weight = _merged_weight(layer, bn, seen["layer"], bn_stats)
    low, high = (v.expand_as(x).reshape(first_in.shape) for v in _low_high(x, bounds))
    rel = _zb_relevance(layer, weight, first_in, relevance, low, high).reshape(x.shape)
    return rel.sum(dim=1), logits


def _gwrp(values: torch.Tensor, d: float) -> torch.Tensor:
    """Global weighted rank pooling (Kolesnikov & Lampert 2016) over the last dimension."""
    ranked = values.sort(dim=-1, descending=True).values
    weights = d ** torch.arange(values.shape[-1], device=values.device, dtype=values.dtype)
    return (ranked * weights).sum(dim=-1) / weights.sum()


@dataclass(frozen=True, kw_only=True)
class HeatmapLoss:
    """The ISNet heatmap loss's constants (Bassi et al. 2024; defaults are the reference
    code's): background scale ``E`` and weight ``A``, foreground weight ``B`` and band
    [``C1``, ``C2``], GWRP decay ``d``."""

    E: float = 1.0
    A: float = 1.0
    B: float = 3.0
    C1: float = 1.0
    C2: float = 25.0
    d: float = 0.9

    def __post_init__(self) -> None:
        if self.E <= 0 or not 0 < self.C1 < self.C2 or not 0 < self.d <= 1:
            raise ValueError(f"isnet needs E > 0, 0 < C1 < C2 and 0 < d <= 1; got {self.E}, "
                             f"{self.C1}, {self.C2}, {self.d}")


def isnet_heatmap_loss(
    heatmap: torch.Tensor,
    masks: torch.Tensor,
    constants: HeatmapLoss | None = None,
    *,
    stabilizer: float = 1e-10,
) -> torch.Tensor:
    """ISNet heatmap loss (Bassi et al. 2024), per sample then averaged over the batch.

    Background: |R| divided by its in-mask mean, its out-of-mask part pooled by GWRP (decay
    ``d``; d -> 1 is the plain mean) to b, loss ``A * log(1 + b / E)``. Foreground: F = sum of
    in-mask |R| (raw, in logit units) is kept within [C1, C2] by
    ``B * (relu(C1 - F)^2 + relu(F - C2)^2) / C1^2`` (both terms over C1^2, as the reference
    code) so the background term cannot be met by shrinking every relevance.
    """
    c = constants or HeatmapLoss()
    E, A, B, C1, C2 = c.E, c.A, c.B, c.C1, c.C2
    n = heatmap.shape[0]
    r = heatmap.abs().reshape(n, -1)
    m = masks.reshape(n, -1).to(r.dtype)
    roi_mean = (r * m).sum(1, keepdim=True) / (m.sum(1, keepdim=True) + stabilizer)
    normalised = r / (roi_mean + stabilizer)
    b = _gwrp(normalised * (1 - m), c.d)
    background = torch.log1p(b / E)
    fg = (r * m).sum(1)
    foreground = (F.relu(C1 - fg) ** 2 + F.relu(fg - C2) ** 2) / C1**2
    return (A * background + B * foreground).mean()


# --- registry ----------------------------------------------------------------------------------

#: name -> Regularizer class
REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


def register_regularizer(name: str) -> Callable[[type[Regularizer]], type[Regularizer]]:
    """Register a :class:`Regularizer` subclass under ``name``."""

    def wrap(cls: type[Regularizer]) -> type[Regularizer]:
        cls.name = name
        return REGULARIZERS.add(name, cls)

    return wrap


class Regularizer:
    """Base: validates the batch, then computes :meth:`compute`. ``lam`` None = the default.

    ``bounds`` = (low, high) normalised input range, used where a method needs it.
    ``clip_grad_norm``: the trainer calls :meth:`clip_gradients` after ``backward`` (None: no
    clipping, the default but for ISNet, whose reference clips at 1.0).
    """

    name: ClassVar[str] = ""
    requires_masks: ClassVar[bool] = True
    default_lambda: ClassVar[float | None] = None
    default_clip: ClassVar[float | None] = None

    def __init__(
        self, *, lam: float | None = None, bounds: tuple[float, float] | None = None,
        clip_grad_norm: float | None | Literal["default"] = "default",
    ) -> None:
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
        if bounds is not None and not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"bounds={bounds!r}; expected (low, high) with low < high")
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        clip = self.default_clip if clip_grad_norm == "default" else clip_grad_norm
        if clip is not None and not float(clip) > 0:
            raise ValueError(f"clip_grad_norm={clip_grad_norm!r}; expected > 0 or None")
        self.clip_grad_norm = None if clip is None else float(clip)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, lam={self.lam})"

    def clip_gradients(self, model: nn.Module) -> float | None:
        """Clip the parameter gradients' total norm to ``clip_grad_norm`` (call after backward);
        returns the norm before clipping, or None when this method does not clip."""
        if self.clip_grad_norm is None:
            return None
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm))

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
        self, ce: torch.Tensor, penalty: torch.Tensor, logits: torch.Tensor, lam: float | None = None
    ) -> RegularizedLoss:
        weight = self.lam if lam is None else lam
        return RegularizedLoss(loss=ce + weight * penalty, ce=ce, penalty=penalty, logits=logits)


def _input_grad(
    model: nn.Module, inputs: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and d score(logits) / d inputs, kept differentiable (double backprop)."""
    x = inputs.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(score(logits), x, create_graph=True)
    return logits, grad


def logit_contrast(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample c = y_t - logsumexp_{k != t} y_k (= log p_t - log(1 - p_t)); for two classes
    y_t - y_other, the contrast of the GradMask reference."""
    true = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


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
    """GradMask (Simpson et al. 2019) in Viviano et al.'s L1 form, on the logit contrast.

    ``target``: ``"contrast"`` (default, :func:`logit_contrast`) or ``"true-class"`` (y_t).
    ``form``: ``"l1"`` (default: sum over the batch of sum |s * o|) or ``"original"`` (GradMask's
    code: sum over the batch of sum (s * o)^2, only samples with a non-empty mask, lambda ramped
    linearly from 0 over the first ``ramp_steps`` calls). Default lambda 1: the papers tune it
    per task, no transferable value exists.

    Gradient norm clipped at 1.0 by default (``clip_grad_norm``; a deviation: the references
    train with Adam, whose step does not grow with the gradient). The penalty is summed over
    the batch, so its parameter gradient starts ~200x the cross-entropy's (norm ~480 at batch
    32 on ``viviano-synthetic``); one SGD step at lr 0.05, momentum 0.9 overshoots, the next
    gradient is larger, and the loss reached NaN by step 5. Clipped, the same run stays finite.
    """

    default_lambda = 1.0
    default_clip = 1.0

    def __init__(
        self, *, lam: float | None = None, target: Literal["contrast", "true-class"] = "contrast",
        form: Literal["l1", "original"] = "l1", ramp_steps: int = 1000, **base: Any,
    ) -> None:
        super().__init__(lam=lam, **base)
        if target not in ("contrast", "true-class"):
            raise ValueError(f"gradmask target={target!r}; expected 'contrast' or 'true-class'")
        if form not in ("l1", "original"):
            raise ValueError(f"gradmask form={form!r}; expected 'l1' or 'original'")
        if ramp_steps < 1:
            raise ValueError(f"gradmask ramp_steps={ramp_steps}; expected >= 1")
        self.target, self.form, self.ramp_steps = target, form, ramp_steps
        self.steps = 0

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        if self.target == "contrast":
            def score(y: torch.Tensor) -> torch.Tensor:
                return logit_contrast(y, targets).sum()
        else:
            def score(y: torch.Tensor) -> torch.Tensor:
                return y.gather(1, targets.view(-1, 1)).sum()
        logits, s = _input_grad(model, inputs, score)
        outside = s * (1 - masks).unsqueeze(1)
        ce = F.cross_entropy(logits, targets)
        if self.form == "l1":
            return self._combine(ce, outside.abs().sum(), logits)
        positive = (masks.flatten(1).sum(1) > 0).to(s.dtype)
        penalty = (outside.pow(2).sum(dim=(1, 2, 3)) * positive).sum()
        self.steps += 1
        return self._combine(ce, penalty, logits, self.lam * min(1.0, self.steps / self.ramp_steps))


@register_regularizer("rrr")
class RRR(Regularizer):
    """Right for the Right Reasons (Ross et al. 2017): the squared out-of-mask input gradient of
    the summed log-probabilities, per sample, averaged over the batch (the batch-mean CE keeps
    the reference's ratio of summed CE to summed penalty).

    Default lambda 1000, the paper's value (there with [0, 1] pixels and an MLP). Gradient
    norm clipped at 1.0 by default, as :class:`GradMask` and for the same reason (the
    reference trains with Adam; under SGD at lr 0.05 the defaults reached NaN by step 6 on
    ``viviano-synthetic``).
    """

    default_lambda = 1000.0
    default_clip = 1.0

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits, s = _input_grad(model, inputs, lambda y: F.log_softmax(y, dim=1).sum())
        penalty = (s * (1 - masks).unsqueeze(1)).pow(2).sum(dim=(1, 2, 3)).mean()
        return self._combine(F.cross_entropy(logits, targets), penalty, logits)


@register_regularizer("actdiff")
class ActDiff(Regularizer):
    """Activation difference (Viviano et al. 2019): activations invariant to the out-of-mask
    pixels, which are shuffled per sample (generator seeded with ``seed``).

    ``layers="penultimate"`` (default, the reference's final code: its ResNet compares the
    last layer, ``save_acts=[5]``): penultimate features (:func:`penultimate_and_logits`),
    penalty = batch mean of ||h(x) - h(x~)||_2. ``layers="all"`` (the reference's earlier
    synthetic-task CNN with ``compare_activations``): the pre-activations of the network (the
    input of every ``nn.ReLU`` call, :func:`relu_inputs_and_logits`), penalty = the mean over
    every layer's rows of the L2 distance along the last dimension (``F.pairwise_distance``, as
    the reference's ``PairwiseDistance``); measured weaker on ``viviano-synthetic`` (README).

    Default lambda 1 (the paper tunes it; with ~1-scale features the penalty starts near 1).
    """

    default_lambda = 1.0

    def __init__(
        self, *, lam: float | None = None, seed: int | None = 0,
        layers: Literal["penultimate", "all"] = "penultimate", **base: Any,
    ) -> None:
        super().__init__(lam=lam, **base)
        if layers not in ("all", "penultimate"):
            raise ValueError(f"actdiff layers={layers!r}; expected 'penultimate' or 'all'")
        self.layers = layers
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        shuffled = shuffle_outside(inputs, masks, self.generator)
        if self.layers == "penultimate":
            h, logits = penultimate_and_logits(model, inputs)
            h_shuffled, _ = penultimate_and_logits(model, shuffled)
            penalty = (h - h_shuffled).flatten(1).norm(dim=1).mean()
        else:
            acts, logits = relu_inputs_and_logits(model, inputs)
            acts_shuffled, _ = relu_inputs_and_logits(model, shuffled)
            penalty = torch.cat([F.pairwise_distance(a, b).flatten()
                                 for a, b in zip(acts, acts_shuffled, strict=True)]).mean()
        return self._combine(F.cross_entropy(logits, targets), penalty, logits)


@register_regularizer("isnet")
class ISNet(Regularizer):
    """ISNet heatmap loss (Bassi et al. 2024): ``(1 - P) CE + P * heatmap_loss``; ``lam`` is P.

    Defaults are the reference code's: P 0.7, E 1, A 1, B 3, C1 1, C2 25, GWRP decay 0.9
    (:class:`HeatmapLoss`, given as keywords ``E=``, ``A=``, ``B=``, ``C1=``, ``C2=``, ``d=``), the
    heatmaps of **all** classes penalised (``classes="label"``: the true class only), z^B on
    the first layer (``first_layer="epsilon"``: the epsilon rule there too), LRP eps 1e-2,
    gradient norm clipped at 1.0 (``clip_grad_norm``). Heatmaps: :func:`lrp_heatmap`; loss:
    :func:`isnet_heatmap_loss`, averaged over samples and classes.
    """

    default_lambda = 0.7
    default_clip = 1.0

    def __init__(
        self,
        *,
        lam: float | None = None,
        eps: float = 1e-2,
        classes: Literal["all", "label"] = "all",
        first_layer: Literal["zb", "epsilon"] = "zb",
        bn_stats: Literal["batch", "running"] = "batch",
        bounds: tuple[float, float] | None = None,
        clip_grad_norm: float | None | Literal["default"] = "default",
        **constants: float,
    ) -> None:
        super().__init__(lam=lam, bounds=bounds, clip_grad_norm=clip_grad_norm)
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam (P) = {self.lam} for regularizer 'isnet'; expected in [0, 1]")
        self.constants = HeatmapLoss(**constants)  # E, A, B, C1, C2, d; others: a TypeError
        if bn_stats not in ("batch", "running") or classes not in ("all", "label"):
            raise ValueError(f"bn_stats={bn_stats!r}, classes={classes!r}; expected "
                             "'batch'|'running' and 'all'|'label'")
        self.eps = eps
        self.classes = classes
        self.first_layer: Literal["zb", "epsilon"] = first_layer
        self.bn_stats: Literal["batch", "running"] = bn_stats

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        logits = model(inputs)
        x, t, m = inputs, targets, masks
        if self.classes == "all":
            k = logits.shape[1]
            x, m = inputs.repeat(k, 1, 1, 1), masks.repeat(k, 1, 1)
            t = torch.arange(k, device=inputs.device).repeat_interleave(inputs.shape[0])
        heatmap, _ = lrp_heatmap(model, x, t, eps=self.eps, bn_stats=self.bn_stats,
                                 first_layer=self.first_layer, bounds=self.bounds)
        penalty = isnet_heatmap_loss(heatmap, m, self.constants)
        ce = F.cross_entropy(logits, targets)
        loss = (1 - self.lam) * ce + self.lam * penalty
        return RegularizedLoss(loss=loss, ce=ce, penalty=penalty, logits=logits)


@register_regularizer("classify-masked")
class ClassifyMasked(Regularizer):
    """Cross-entropy on :func:`mask_inputs` (a data transform; no weight). ``logits`` are those
    of the masked inputs. ``background="black"`` (default, the reference: pixel 0, the low end
    of ``bounds``) or ``"mean"`` (0 in model space, the data mean)."""

    def __init__(
        self, *, lam: float | None = None, background: Literal["black", "mean"] = "black",
        **base: Any,
    ) -> None:
        super().__init__(lam=lam, **base)
        if background not in ("black", "mean"):
            raise ValueError(f"classify-masked background={background!r}; expected 'black' or 'mean'")
        self.background = background

    def compute(self, model, inputs, targets, masks):  # type: ignore[no-untyped-def]
        assert masks is not None
        fill = _low_high(inputs, self.bounds)[0] if self.background == "black" else 0.0
        logits = model(mask_inputs(inputs, masks, fill))
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
