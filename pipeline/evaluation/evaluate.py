"""Evaluate a checkpoint on shard data: ``evaluation.json`` plus PNG plots in an output folder.

Data are named as everywhere in the pipeline: ``ROOT#split`` (shard root URL, then the split),
a plain ``ROOT`` meaning split ``test``. Instead of a URL, any iterable of decoded samples
(dicts with ``image`` uint8 C x H x W, ``label`` int and optional ``mask`` uint8 H x W, as
:func:`reldrop.pipeline.data.shards.iter_samples` yields) can be given, which is what the tests do.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reldrop.checkpoint import ModelSpec, load_checkpoint
from reldrop.evaluation import FRACTIONS, EvaluationResult, evaluate
from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.errors import OnError
from reldrop.pipeline.data.stream import model_inputs, parse_data_url
from reldrop.pipeline.training.report import json_safe

__all__ = ["DEFAULT_SPLIT", "evaluate_checkpoint", "evaluate_model", "sample_batches"]

DEFAULT_SPLIT = "test"
Data = str | Iterable[Mapping[str, Any]]


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # a writable copy (decoded arrays may be read-only)
    return torch.as_tensor(value)


def sample_batches(
    samples: Iterable[Mapping[str, Any]],
    normalization: Any,
    *,
    batch_size: int = 128,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Group decoded samples into ``(inputs, targets, masks)`` batches in model space.

    ``masks`` is ``None`` for a batch in which any sample lacks a ``mask``. At most ``limit``
    samples are used.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}; expected >= 1 or None")
    pending: list[Mapping[str, Any]] = []

    def flush() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        name = "image" if pending[0].get("image") is not None else "points"
        x = model_inputs(torch.stack([_tensor(s[name]) for s in pending]), normalization)
        y = torch.tensor([int(s["label"]) for s in pending], dtype=torch.long)
        have = [s.get("mask") is not None for s in pending]
        m = torch.stack([_tensor(s["mask"]) != 0 for s in pending]) if all(have) else None
        pending.clear()
        return x, y, m

    seen = 0
    for sample in samples:
        if limit is not None and seen >= limit:
            break
        pending.append(sample)
        seen += 1
        if len(pending) == batch_size:
            yield flush()
    if pending:
        yield flush()


def evaluate_model(
    model: nn.Module,
    spec: ModelSpec,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    *,
    composite: str = "reference",
    seed: int = 0,
    keep_examples: int = 8,
) -> EvaluationResult:
    """:func:`reldrop.evaluation.evaluate` with the box bounds of ``spec``'s normalisation."""
    return evaluate(
        model,
        batches,
        composite=composite,
        bounds=spec.normalization.bounds(),
        fractions=FRACTIONS,
        seed=seed,
        keep_examples=keep_examples,
    )


def _preflight(model: nn.Module, spec: ModelSpec, checkpoint: str | Path,
               data: Iterable[Data | None], decode: DecodeOptions | None) -> None:
    """Checkpoint against each data set's schema (manifest, or the first shard of plain
    WebDataset shards), before the samples are read."""
    from reldrop.pipeline.data.manifest import has_manifest
    from reldrop.pipeline.data.plan import plan_split
    from reldrop.pipeline.preflight import check_model_output, check_spec_fits

    where = f"checkpoint {str(checkpoint)!r}"
    for url in data:
        if isinstance(url, str):
            # without a manifest the class count is the model's (the shards cannot say)
            classes = None if has_manifest(parse_data_url(url, DEFAULT_SPLIT)[0]) else spec.num_classes
            manifest = plan_split(url, DEFAULT_SPLIT, on_error="skip", decode=decode,
                                  num_classes=classes).manifest
            check_spec_fits(spec, manifest, where=where)
            check_model_output(model, spec, manifest.input_shape, where=where)


def _samples(data: Data, on_error: OnError, decode: DecodeOptions | None
             ) -> tuple[str, Iterable[Any]]:
    if isinstance(data, str):
        root, split = parse_data_url(data, DEFAULT_SPLIT)
        from reldrop.pipeline.data.read import iter_samples  # torch is heavy

        return f"{root}#{split}", iter_samples(f"{root}#{split}", on_error=on_error, decode=decode)
    return "<samples>", data


def _plots(
    out: Path, results: Mapping[str, EvaluationResult], spec: ModelSpec
) -> list[str]:
    try:
        from reldrop import plots
    except ImportError as err:  # pragma: no cover - depends on the environment
        warnings.warn(f"no plots written: {err}", stacklevel=3)
        return []
    try:
        written = [
            plots.plot_occlusion_curves(
                {name: r.to_json()["occlusion"] for name, r in results.items()},
                out / "occlusion_curves.png",
            )
        ]
        for name, r in results.items():
            ex = r.examples
            if ex and ex["inputs"].ndim == 4:
                titles = [f"y={int(t)} p={int(p)}" for t, p in zip(ex["targets"],
                                                                   ex["predictions"])]
                written.append(
                    plots.plot_relevance_grid(
                        ex["inputs"], ex["relevance"], out / f"relevance_{name}.png",
                        occluded=ex["occluded"], masks=ex.get("masks"),
                        normalization=spec.normalization, titles=titles,
                    )
                )
        table = {
            name: {
                "accuracy": r.accuracy,
                "relevance AUC": r.relevance_auc,
                "random AUC": r.random_auc,
                "mask share": r.mask_share,
                "RMS calibration": r.rms_calibration_error,
            }
            for name, r in results.items()
        }
        written.append(plots.plot_comparison_bars(table, out / "metrics.png"))
    except ImportError as err:
        warnings.warn(f"no plots written: {err}", stacklevel=3)
        return []
    return [p.name for p in written]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_url: Data,
    ood_url: Data | None = None,
    *,
    out_dir: str | Path,
    batch_size: int = 128,
    composite: str = "reference",
    limit: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    device: str = "cpu",
    plots: bool = True,
    decode: DecodeOptions | None = None,
    model: str | None = None,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data_url`` (and the out-of-distribution ``ood_url``).

    Writes ``out_dir/evaluation.json`` (returned as a dict: ``checkpoint``, ``model``,
    ``composite``, ``seed``, ``datasets`` name -> metrics, ``plots``) and, with ``plots``,
    ``occlusion_curves.png``, ``relevance_<name>.png`` and ``metrics.png`` where ``name`` is
    ``in_distribution`` or ``out_of_distribution``.

    The checkpoint is read through :func:`reldrop.checkpoint.load_checkpoint` (``model`` /
    ``trust_model_code``: see there); it must fit every data set's manifest (channels, classes,
    logits) before any sample is read; every shard is verified (size, sha256, sample count)
    as training verifies it.
    """
    net, spec, extra = load_checkpoint(checkpoint, model=model, trust_model_code=trust_model_code)
    _preflight(net, spec, checkpoint, [data_url, ood_url], decode)
    net.to(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, Data] = {"in_distribution": data_url}
    if ood_url is not None:
        datasets["out_of_distribution"] = ood_url
    results: dict[str, EvaluationResult] = {}
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": spec.to_json(),
        "composite": composite,
        "seed": seed,
        "limit": limit,
        "datasets": {},
    }
    for name, data in datasets.items():
        start = time.perf_counter()
        source, samples = _samples(data, on_error, decode)
        batches = sample_batches(samples, spec.normalization, batch_size=batch_size, limit=limit)
        results[name] = evaluate_model(net, spec, batches, composite=composite, seed=seed)
        report["datasets"][name] = {
            "data": source,
            **results[name].to_json(),
            "seconds": round(time.perf_counter() - start, 3),
        }
    report["plots"] = _plots(out, results, spec) if plots else []
    if extra:
        report["checkpoint_extra"] = extra
    report = json_safe(report)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report
