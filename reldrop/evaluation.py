"""Evaluation metrics: accuracy, occlusion curves, feature utilisation, calibration.

- **Occlusion curves** (pixel flipping, Samek et al. 2017): the top-f fraction of input
  features, ordered by the true-class relevance (most positive first) or in a seeded random
  order, is replaced by a fill defined in the space the model sees (``zero`` = the data mean),
  for f = 0, 0.05, ..., 1; accuracy per fraction and the area under each curve (trapezoid over
  f). A model that relies on what its relevance points at falls faster under relevance order;
  ``auc_gap`` = random AUC - relevance AUC measures that (Samek et al. 2017 read the relevance
  curve as explanation quality, not robustness). A method trained on relevance-ordered
  occlusion (RelDrop) sees that very perturbation in training, so its relevance AUC is not a
  robustness figure: compare the random-order AUC for robustness to occlusion.
- **Feature utilisation**: share of the positive relevance inside the region-of-interest mask,
  and the number (and fraction) of features holding 50% of the relevance mass; mass is |R| by
  default (``mass="positive"``: positive R only).
- **Calibration**: RMS calibration error over 15 equal-width confidence bins (Hendrycks et al.
  2019), confidence = highest softmax probability.

:func:`evaluate` works batched over an iterable of ``(inputs, targets, masks)`` batches
(``masks`` N x H x W or ``None``) and returns an :class:`EvaluationResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from reldrop.composites import Bounds
from reldrop.fills import FillParams, apply_fill
from reldrop.relevance import eval_mode, relevance

__all__ = [
    "FRACTIONS",
    "EvaluationResult",
    "Explainer",
    "accuracy",
    "area_under_curve",
    "calibration_error",
    "evaluate",
    "mask_share",
    "mass_count",
    "occlusion_correct",
    "occlusion_ranks",
]

#: f = 0, 0.05, ..., 1
FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
#: (model, inputs, targets) -> relevance N x H x W (or N x P)
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
Mass = Literal["abs", "positive"]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the target (0.0 for an empty batch)."""
    if logits.shape[0] == 0:
        return 0.0
    return float((logits.argmax(dim=1) == targets.to(logits.device)).float().mean())


def occlusion_ranks(
    scores: torch.Tensor | None,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Occlusion rank of every feature (N x D, 0 = occluded first).

    With ``scores`` (N x ...): descending score, ties in index order. With ``scores=None``: a
    random order of ``shape`` = (N, D) drawn from ``generator``.
    """
    if scores is not None:
        flat = scores.reshape(scores.shape[0], -1)
        order = torch.argsort(-flat, dim=1, stable=True)
    else:
        if shape is None:
            raise ValueError("occlusion_ranks needs scores or shape")
        order = torch.argsort(torch.rand(shape, generator=generator), dim=1)
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def occlusion_correct(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    ranks: torch.Tensor,
    fractions: Sequence[float] = FRACTIONS,
    *,
    fill: str = "zero",
    fill_params: FillParams | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Number of correct predictions after occluding the features ranked below round(f * D),
    for each f in ``fractions`` (a float tensor of length ``len(fractions)``)."""
    spatial = inputs.shape[2:] if inputs.ndim == 4 else inputs.shape[1:2]
    d = ranks.shape[1]
    params = fill_params or FillParams()
    out = torch.zeros(len(fractions), dtype=torch.float64)
    with torch.no_grad():
        for j, f in enumerate(fractions):
            dropped = (ranks < int(round(f * d))).reshape(inputs.shape[0], *spatial)
            occluded = apply_fill(inputs, dropped.to(inputs.device), fill, params, generator)
            pred = model(occluded).argmax(dim=1)
            out[j] = float((pred == targets).sum())
    return out


def area_under_curve(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` over ``fractions``."""
    if len(fractions) != len(values):
        raise ValueError(f"{len(fractions)} fractions but {len(values)} values")
    return float(
        sum(
            (fractions[i + 1] - fractions[i]) * (values[i + 1] + values[i]) / 2
            for i in range(len(fractions) - 1)
        )
    )


def mask_share(rel: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample share of the positive relevance inside ``masks`` (NaN: no positive relevance)."""
    pos = rel.clamp(min=0).reshape(rel.shape[0], -1)
    m = masks.reshape(masks.shape[0], -1).to(pos.device)
    m = m.to(pos.dtype) if m.dtype.is_floating_point else (m != 0).to(pos.dtype)
    total = pos.sum(dim=1)
    share = (pos * m).sum(dim=1) / total
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def mass_count(rel: torch.Tensor, share: float = 0.5, mass: Mass = "abs") -> torch.Tensor:
    """Per-sample number of features holding ``share`` of the relevance mass (NaN: no mass).

    ``mass="abs"`` uses |R|, ``"positive"`` the positive part of R.
    """
    if mass not in ("abs", "positive"):
        raise ValueError(f"mass={mass!r}; expected 'abs' or 'positive'")
    if not 0 < share <= 1:
        raise ValueError(f"share={share}; expected in (0, 1]")
    values = rel.abs() if mass == "abs" else rel.clamp(min=0)
    values = values.reshape(values.shape[0], -1).sort(dim=1, descending=True).values
    cumulative = values.cumsum(dim=1)
    total = cumulative[:, -1:]
    # smallest k with cumsum[k - 1] >= share * total (tiny slack for float round-off)
    count = (cumulative < share * total * (1 - 1e-6)).sum(dim=1).to(values.dtype) + 1
    return torch.where(total[:, 0] > 0, count, torch.full_like(count, float("nan")))


def calibration_error(
    confidences: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> float:
    """RMS calibration error: sqrt(sum_b n_b / N * (accuracy_b - confidence_b)^2)."""
    if bins < 1:
        raise ValueError(f"bins={bins}; expected >= 1")
    n = confidences.numel()
    if n == 0:
        return float("nan")
    conf = confidences.double().flatten()
    hit = correct.double().flatten()
    index = (conf * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    hit_sum = torch.bincount(index, weights=hit, minlength=bins)
    used = counts > 0
    gap = (hit_sum[used] - conf_sum[used]) / counts[used]
    return float(torch.sqrt((counts[used] / n * gap**2).sum()))


@dataclass
class EvaluationResult:
    """Metrics of one data set; :meth:`to_json` gives everything but ``examples``."""

    n: int
    accuracy: float
    fractions: list[float]
    relevance_curve: list[float]
    random_curve: list[float]
    relevance_auc: float
    random_auc: float
    mask_share: float | None
    mass50_count: float
    mass50_fraction: float
    rms_calibration_error: float
    mass: str = "abs"
    #: first samples for plots: inputs, relevance, masks (or absent), occluded, fraction
    examples: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "occlusion": {
                "fractions": self.fractions,
                "relevance_order": self.relevance_curve,
                "random_order": self.random_curve,
                "relevance_auc": self.relevance_auc,
                "random_auc": self.random_auc,
                "auc_gap": self.random_auc - self.relevance_auc,
            },
            "feature_utilization": {
                "mask_share_positive": self.mask_share,
                "mass50_count": self.mass50_count,
                "mass50_fraction": self.mass50_fraction,
                "mass": self.mass,
            },
            "rms_calibration_error": self.rms_calibration_error,
        }


def _nanmean(chunks: list[torch.Tensor]) -> float:
    if not chunks:
        return float("nan")
    values = torch.cat(chunks)
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    composite: str = "reference",
    bounds: Bounds | None = None,
    explain: Explainer | None = None,
    fractions: Sequence[float] = FRACTIONS,
    fill: str = "zero",
    seed: int = 0,
    mass: Mass = "abs",
    bins: int = 15,
    keep_examples: int = 0,
    example_fraction: float = 0.1,
) -> EvaluationResult:
    """All metrics over ``batches`` of ``(inputs, targets, masks)`` (normalised inputs).

    Relevance is that of the true class from ``explain`` (default: LRP with ``composite`` via
    :func:`reldrop.relevance.relevance`). The random order and random fills use a generator
    seeded with ``seed``. The model runs in eval mode; its modes are restored afterwards.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or fractions != sorted(fractions) or fractions[0] < 0 or fractions[-1] > 1:
        raise ValueError(f"fractions={fractions}; expected an increasing sequence in [0, 1]")

    def lrp(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return relevance(m, x, t, composite=composite, bounds=bounds)

    explainer: Explainer = explain or lrp

    generator = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = 0
    correct = 0.0
    rel_correct = torch.zeros(len(fractions), dtype=torch.float64)
    rnd_correct = torch.zeros(len(fractions), dtype=torch.float64)
    shares: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    confidences: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    examples: dict[str, Any] = {}
    with eval_mode(model):
        for inputs, targets, masks in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.no_grad():
                logits = model(inputs)
            probs = logits.float().softmax(dim=1)
            conf, pred = probs.max(dim=1)
            hit = pred == targets
            confidences.append(conf.cpu())
            hits.append(hit.cpu())
            correct += float(hit.sum())
            n += inputs.shape[0]

            rel = explainer(model, inputs, targets).detach()
            d = rel[0].numel()
            ranks = occlusion_ranks(rel)
            rel_correct += occlusion_correct(
                model, inputs, targets, ranks, fractions, fill=fill, generator=generator
            )
            random_ranks = occlusion_ranks(None, tuple(ranks.shape), generator).to(device)
            rnd_correct += occlusion_correct(
                model, inputs, targets, random_ranks, fractions, fill=fill, generator=generator
            )
            if masks is not None:
                shares.append(mask_share(rel, masks).cpu())
            c = mass_count(rel, 0.5, mass).cpu()
            counts.append(c)
            sizes.append(torch.full_like(c, float(d)))
            if keep_examples and not examples:
                k = min(keep_examples, inputs.shape[0])
                dropped = ranks[:k] < int(round(example_fraction * d))
                occluded = apply_fill(
                    inputs[:k], dropped.reshape(rel[:k].shape), fill, FillParams(), generator
                )
                examples = {
                    "inputs": inputs[:k].cpu(),
                    "relevance": rel[:k].cpu(),
                    "occluded": occluded.cpu(),
                    "fraction": example_fraction,
                    "targets": targets[:k].cpu(),
                    "predictions": pred[:k].cpu(),
                }
                if masks is not None:
                    examples["masks"] = masks[:k].cpu()
    if n == 0:
        raise ValueError("evaluate got no samples (batches was empty)")
    rel_curve = (rel_correct / n).tolist()
    rnd_curve = (rnd_correct / n).tolist()
    count_mean = _nanmean(counts)
    fraction_mean = _nanmean([c / s for c, s in zip(counts, sizes)])
    share = _nanmean(shares) if shares else None
    return EvaluationResult(
        n=n,
        accuracy=correct / n,
        fractions=fractions,
        relevance_curve=rel_curve,
        random_curve=rnd_curve,
        relevance_auc=area_under_curve(fractions, rel_curve),
        random_auc=area_under_curve(fractions, rnd_curve),
        mask_share=share,
        mass50_count=count_mean,
        mass50_fraction=fraction_mean,
        rms_calibration_error=calibration_error(torch.cat(confidences), torch.cat(hits), bins),
        mass=mass,
        examples=examples,
    )
