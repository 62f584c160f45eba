"""Precompute relevance once from a frozen checkpoint, as key-aligned column shards.

``reldrop explain`` writes ``{out}/relevance/{split}-{i:06d}.parquet`` for every data shard
``i`` (same keys, same order), so data shards are never rewritten; ``--mode precomputed``
training reads them back every epoch instead of running explainers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from reldrop.checkpoint import load_checkpoint
from reldrop.pipeline.data.columns import write_columns
from reldrop.pipeline.data.read import SkipReport, iter_samples
from reldrop.pipeline.data.stream import model_inputs, parse_data_url
from reldrop.relevance import relevance

__all__ = ["explain_dataset"]


def _explain(model: torch.nn.Module, spec: Any, batch: list[dict[str, Any]], composite: str) -> np.ndarray:
    arrays = np.stack([s["image"] if "image" in s else s["points"] for s in batch])
    x = model_inputs(arrays, spec.normalization)
    y = torch.tensor([s["label"] for s in batch])
    return relevance(model, x, y, composite=composite, bounds=spec.normalization.bounds()).numpy()


def _preflight(model: torch.nn.Module, spec: Any, checkpoint: str, manifest: Any) -> None:
    from reldrop.pipeline.preflight import check_model_output, check_spec_fits

    where = f"checkpoint {checkpoint!r}"
    check_spec_fits(spec, manifest, where=where)
    check_model_output(model, spec, manifest.input_shape, where=where)


def _by_shard(samples: Iterable[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Consecutive samples grouped by the shard they came from."""
    for url, group in itertools.groupby(samples, key=lambda s: s["url"]):
        yield url, list(group)


def explain_dataset(
    checkpoint: str,
    data_url: str,
    *,
    out_url: str | None = None,
    composite: str = "reference",
    batch_size: int = 64,
    on_error: str = "raise",
    model: str | None = None,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Write float16 relevance for every sample of ``data_url`` (``ROOT#split``, default
    ``train``), one column shard per data shard; return a summary (shards, samples,
    samples/s, skipped). ``model`` / ``trust_model_code``: see
    :func:`reldrop.checkpoint.load_checkpoint`."""
    from reldrop.pipeline.data.manifest import read_manifest

    root, split = parse_data_url(data_url, "train")
    out_url = out_url or root
    index_of = {url: i for i, url in enumerate(read_manifest(root).shard_urls(split))}
    net, spec, _ = load_checkpoint(checkpoint, model=model, trust_model_code=trust_model_code)
    _preflight(net, spec, checkpoint, read_manifest(root))
    net.eval()
    report = SkipReport()
    start = time.perf_counter()
    written: list[str] = []
    samples = 0
    stream = iter_samples(root, split, on_error=on_error, report=report)  # type: ignore[arg-type]
    for url, group in _by_shard(stream):
        chunks = [_explain(net, spec, group[i : i + batch_size], composite)
                  for i in range(0, len(group), batch_size)]
        written.append(write_columns(out_url, split, index_of[url], [s["key"] for s in group],
                                     {"relevance": np.concatenate(chunks).astype(np.float16)}))
        samples += len(group)
    elapsed = time.perf_counter() - start
    return {
        "out": out_url,
        "split": split,
        "shards": len(written),
        "samples": samples,
        "samples_per_s": samples / elapsed if elapsed else 0.0,
        "skipped": report.samples,
    }
