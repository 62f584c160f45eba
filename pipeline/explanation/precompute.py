"""Precompute relevance once from a frozen checkpoint, as key-aligned column shards.

``reldrop explain`` writes ``{out}/relevance/{split}-{i:06d}.parquet`` for every data shard
``i`` (same keys, same order), so data shards are never rewritten; ``--mode precomputed``
training reads them back every epoch instead of running explainers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from reldrop.checkpoint import load_checkpoint
from reldrop.pipeline.data.columns import write_columns
from reldrop.pipeline.data.shards import SkipReport, iter_samples
from reldrop.pipeline.data.stream import model_inputs, parse_data_url
from reldrop.relevance import relevance

__all__ = ["explain_dataset"]


def explain_dataset(
    checkpoint: str,
    data_url: str,
    *,
    out_url: str | None = None,
    composite: str = "reference",
    batch_size: int = 64,
    on_error: str = "raise",
) -> dict[str, Any]:
    """Write float16 relevance for every sample of ``data_url`` (``ROOT#split``, default
    ``train``); return a summary (shards, samples, samples/s, skipped)."""
    from reldrop.pipeline.data.manifest import read_manifest  # noqa: PLC0415

    root, split = parse_data_url(data_url, "train")
    out_url = out_url or root
    manifest = read_manifest(root)
    index_of = {url: i for i, url in enumerate(manifest.shard_urls(split))}
    model, spec, _ = load_checkpoint(checkpoint)
    model.eval()
    report = SkipReport()
    start = time.perf_counter()
    written: list[str] = []
    samples = 0

    def flush(url: str, keys: list[str], chunks: list[np.ndarray]) -> None:
        written.append(write_columns(out_url, split, index_of[url], keys,
                                     {"relevance": np.concatenate(chunks).astype(np.float16)}))

    current: str | None = None
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    pending: list[dict[str, Any]] = []

    def explain(batch: list[dict[str, Any]]) -> np.ndarray:
        arrays = np.stack([s["image"] if "image" in s else s["points"] for s in batch])
        x = model_inputs(arrays, spec.normalization)
        y = torch.tensor([s["label"] for s in batch])
        return relevance(model, x, y, composite=composite, bounds=spec.normalization.bounds()).numpy()

    def drain() -> None:
        nonlocal pending
        if pending:
            chunks.append(explain(pending))
            keys.extend(s["key"] for s in pending)
            pending = []

    for sample in iter_samples(root, split, on_error=on_error, report=report):  # type: ignore[arg-type]
        if sample["url"] != current:
            drain()
            if current is not None and keys:
                flush(current, keys, chunks)
            current, keys, chunks = sample["url"], [], []
        pending.append(sample)
        samples += 1
        if len(pending) == batch_size:
            drain()
    drain()
    if current is not None and keys:
        flush(current, keys, chunks)
    elapsed = time.perf_counter() - start
    return {
        "out": out_url,
        "split": split,
        "shards": len(written),
        "samples": samples,
        "samples_per_s": samples / elapsed if elapsed else 0.0,
        "skipped": report.samples,
    }
