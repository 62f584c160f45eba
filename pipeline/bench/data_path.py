"""The data path alone: rows/s from shards to ``iter_batches``, the old read against the new.

``new`` is :func:`reldrop.pipeline.data.stream.read_split` (one verifying read task per shard,
batch-decoded blocks); ``old`` is the path it replaced, kept here only as the baseline:
``ray.data.read_webdataset`` plus a per-row ``Dataset.map`` decoder (no sha256, no sample
count). Runs are interleaved (old, new, old, new, ...) and medians reported, so both paths see
the same machine load.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from reldrop.pipeline.data.read import RowSchema, decode_stream_row
from reldrop.pipeline.data.shards import write_dataset
from reldrop.pipeline.data.stream import DataPlan, plan_split, read_split

__all__ = ["PATHS", "make_bench_shards", "measure_data_path"]

PATHS = ("old", "new")


def make_bench_shards(
    root: str, *, rows: int = 20_000, shape: tuple[int, ...] = (3, 32, 32), shard_size: int = 1000,
    num_classes: int = 10, seed: int = 0,
) -> str:
    """Write ``rows`` random uint8 images of ``shape`` as a ``train`` split; return ``root``."""
    rng = np.random.default_rng(seed)
    samples = (
        {"key": f"b{i:07d}", "image": rng.integers(0, 256, shape, dtype=np.uint8),
         "label": int(rng.integers(num_classes))}
        for i in range(rows)
    )
    write_dataset(root, {"train": samples}, dataset="bench", num_classes=num_classes,
                  shard_size=shard_size)
    return root


def _old_path(plan: DataPlan, *, read_cpus: float, rows_per_block: int | None) -> Any:
    """The read this module compares against: ``read_webdataset`` + a per-row decoder."""
    import ray

    from reldrop.pipeline.data.fs import arrow_filesystem

    fs, _ = arrow_filesystem(plan.urls[0])
    ds = ray.data.read_webdataset(
        [arrow_filesystem(u)[1] for u in plan.urls], filesystem=fs, decoder=None, shuffle=None,
        ray_remote_args={"num_cpus": read_cpus},
        override_num_blocks=max(len(plan.urls), 4, -(-plan.num_samples // (rows_per_block or 1 << 30))),
    )
    schema = RowSchema.of(plan.manifest, on_error="raise")
    return ds.map(partial(decode_stream_row, schema=schema), num_cpus=read_cpus)


_CPU_LINE = re.compile(r"Remote cpu time: .* ([0-9.]+)(us|ms|s) total")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _remote_cpu_s(ds: Any) -> float:
    """CPU seconds the dataset's Ray tasks used (summed from ``Dataset.stats()``)."""
    return sum(float(v) * _UNIT[u] for v, u in _CPU_LINE.findall(ds.stats()))


def _one_run(path: str, plan: DataPlan, *, batch_size: int, read_cpus: float,
             rows_per_block: int | None, epoch: int) -> dict[str, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    if path == "old":
        ds = _old_path(plan, read_cpus=read_cpus, rows_per_block=rows_per_block)
    else:
        ds = read_split(plan, on_error="raise", read_cpus=read_cpus, rows_per_block=rows_per_block,
                        shuffle_seed=0, epoch=epoch)
    rows = 0
    first = None
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        rows += len(batch["label"])
        if first is None:
            first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start + _remote_cpu_s(ds)
    if rows != plan.num_samples:
        raise RuntimeError(f"{path} path gave {rows} rows, expected {plan.num_samples}")
    return {"rows_per_s": rows / elapsed, "rows_per_cpu_s": rows / cpu_s,
            "first_batch_s": first or elapsed, "wall_s": elapsed}


def measure_data_path(
    root: str | None = None,
    *,
    paths: Sequence[str] = PATHS,
    rows: int = 20_000,
    shape: tuple[int, ...] = (3, 32, 32),
    shard_size: int = 1000,
    batch_size: int = 256,
    repeats: int = 3,
    read_cpus: float = 0.25,
    rows_per_block: int | None = None,
) -> dict[str, Any]:
    """Rows/s of read -> ``iter_batches(batch_size)`` per path (medians of ``repeats``).

    ``rows_per_s`` is wall-clock throughput; ``rows_per_cpu_s`` divides rows by the CPU time
    the Ray tasks and this process spent, which stays meaningful on a shared, busy machine.

    ``root``: an existing dataset (its ``train`` split); ``None`` writes ``rows`` random images
    of ``shape`` to a temporary folder first. Starts a local Ray if none is running.
    """
    import ray

    unknown = [p for p in paths if p not in PATHS]
    if unknown or repeats < 1:
        raise ValueError(f"paths {list(paths)} (allowed {list(PATHS)}), repeats {repeats} (>= 1)")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="reldrop-bench-data-") as tmp:
        if root is None:
            root = make_bench_shards(str(Path(tmp) / "shards"), rows=rows, shape=shape,
                                     shard_size=shard_size)
        plan = plan_split(root, "train", on_error="raise")
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
        for r in range(repeats):
            for path in paths:
                runs[path].append(_one_run(path, plan, batch_size=batch_size, read_cpus=read_cpus,
                                           rows_per_block=rows_per_block, epoch=r))
    result: dict[str, Any] = {
        "rows": plan.num_samples, "shards": len(plan.urls), "batch_size": batch_size,
        "repeats": repeats, "read_cpus": read_cpus, "rows_per_block": rows_per_block,
        "cluster_cpus": float(ray.cluster_resources().get("CPU", 0)),
    }
    for path, values in runs.items():
        result[path] = {
            key: statistics.median(v[key] for v in values)
            for key in ("rows_per_s", "rows_per_cpu_s", "first_batch_s", "wall_s")
        } | {"runs_rows_per_s": [v["rows_per_s"] for v in values]}
    return result


if __name__ == "__main__":  # python -m reldrop.pipeline.bench.data_path
    import json
    import sys

    print(json.dumps(measure_data_path(*sys.argv[1:2]), indent=2))
