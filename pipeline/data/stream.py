"""Ray Data streams: shards -> verified, decoded blocks -> (explainer stage) -> the trainer.

Rows carry ``key`` (str), ``image`` (uint8 C x H x W, or float32 P x C for point clouds),
``label`` (int64), ``mask`` (uint8 region of interest, when the dataset has masks),
``skipped`` (bool) and ``reason`` (str), plus a joined column such as ``relevance`` when asked.
Every shard is verified while it is read (size, sha256, member names, sample count; see
:mod:`reldrop.pipeline.data.read`). Under ``on_error="skip"`` a bad sample becomes a
placeholder row with ``skipped=True`` that flows to the trainer, which counts it; a shard that
is missing or of the wrong size is left out up front (:attr:`DataPlan.skipped_shards`), and one
that fails verification while streaming becomes one placeholder row per manifest sample whose
``reason`` names the shard (:func:`reldrop.pipeline.data.read.shard_skip` recognises them).
Nothing is lost silently.

Per-epoch shuffling: ``read_split(plan, shuffle_seed=s, epoch=e)`` permutes the shard order
and the rows inside every shard with a seed derived from ``(s, e)``: a different order each
epoch, the same for the same seed, every key once per epoch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reldrop.pipeline.data.blocks import cut_blocks
from reldrop.pipeline.data.columns import ColumnJoin
from reldrop.pipeline.data.fs import resolve
from reldrop.pipeline.data.manifest import ChecksumError, Manifest, ShardInfo, read_manifest
from reldrop.pipeline.data.read import ON_ERROR, RowSchema, ShardTask, read_shards

__all__ = [
    "DataPlan",
    "data_error",
    "model_inputs",
    "parse_data_url",
    "plan_split",
    "read_split",
    "shard_tasks",
]


def parse_data_url(url: str, default_split: str) -> tuple[str, str]:
    """``ROOT#split`` -> (ROOT, split); plain ``ROOT`` uses ``default_split``."""
    if "#" in url:
        root, split = url.rsplit("#", 1)
        if not split:
            raise ValueError(f"data URL {url!r} ends in '#': name a split after it")
        return root, split
    return url, default_split


@dataclass(frozen=True)
class DataPlan:
    """The shards of one split to read, and the shards left out up front (missing, wrong size)."""

    root: str
    split: str
    manifest: Manifest
    urls: tuple[str, ...]
    skipped_shards: tuple[dict[str, Any], ...] = field(default=())

    @property
    def num_samples(self) -> int:
        bad = {s["url"] for s in self.skipped_shards}
        return sum(
            info.num_samples
            for info, url in zip(self.manifest.shards_of(self.split), self.manifest.shard_urls(self.split))
            if url not in bad
        )


def plan_split(url: str, default_split: str, *, on_error: str) -> DataPlan:
    """Find ``split``'s shards in the manifest and check their sizes (one listing, no reads).

    A missing or resized shard raises under ``on_error="raise"``; under ``"skip"`` it is left
    out and recorded. Contents (sha256, members, sample count) are verified by the read tasks
    while they stream, so no shard is read twice.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; allowed: {list(ON_ERROR)}")
    root, split = parse_data_url(url, default_split)
    manifest = read_manifest(root)
    if split not in manifest.splits:
        raise ValueError(f"split {split!r} not in {root!r}; it has {list(manifest.splits)}")
    infos, urls = manifest.shards_of(split), manifest.shard_urls(split)
    good: list[str] = []
    skipped: list[dict[str, Any]] = []
    for info, shard_url, problem in zip(infos, urls, _size_problems(infos, urls)):
        if problem is None:
            good.append(shard_url)
        elif on_error == "raise":
            raise ChecksumError(f"{problem}; --on-error skip leaves it out")
        else:
            skipped.append({"url": shard_url, "samples": info.num_samples, "reason": problem})
    return DataPlan(root, split, manifest, tuple(good), tuple(skipped))


def _size_problems(infos: tuple[ShardInfo, ...], urls: list[str]) -> list[str | None]:
    """Per shard: ``None`` or why its size is wrong; one directory listing where possible."""
    sizes: dict[str, int] = {}
    if urls:
        fs, first = resolve(urls[0])
        folder = first.rsplit("/", 1)[0]
        try:
            sizes = {e["name"].rstrip("/"): int(e["size"]) for e in fs.ls(folder, detail=True)}
        except (OSError, KeyError, TypeError):
            sizes = {}
    problems: list[str | None] = []
    for info, shard_url in zip(infos, urls):
        fs, path = resolve(shard_url)
        size = sizes.get(path)
        if size is None:
            try:
                size = int(fs.size(path))
            except FileNotFoundError:
                problems.append(f"shard {shard_url!r} listed in the manifest does not exist")
                continue
        problems.append(
            None if size == info.num_bytes
            else f"shard {shard_url!r}: {size} bytes, manifest says {info.num_bytes} (truncated or replaced)"
        )
    return problems


_DATA_LINE = re.compile(r"shard '[^']*'(?:, sample '[^']*')?: ")


def data_error(err: BaseException) -> str | None:
    """The line holding ``shard '...'[, sample '...']: ...`` inside a (Ray-wrapped) data error
    (whole, with any context before it, such as an exception class name)."""
    for line in str(err).splitlines():
        if _DATA_LINE.search(line):
            return line.strip()
    return None


def shard_tasks(
    plan: DataPlan, *, shuffle_seed: int | None = None, epoch: int = 0,
    columns: ColumnJoin | None = None,
) -> list[ShardTask]:
    """One :class:`ShardTask` per shard of ``plan``, in this epoch's order."""
    index_of = {url: i for i, url in enumerate(plan.manifest.shard_urls(plan.split))}
    info_of = dict(zip(plan.manifest.shard_urls(plan.split), plan.manifest.shards_of(plan.split)))
    urls = list(plan.urls)
    if shuffle_seed is not None:
        order = np.random.default_rng([shuffle_seed, epoch]).permutation(len(urls))
        urls = [urls[i] for i in order]
    return [
        ShardTask.of(
            info_of[url], url,
            row_seed=None if shuffle_seed is None else (shuffle_seed, epoch, index_of[url]),
            column_url=None if columns is None else columns.url(plan.split, index_of[url]),
        )
        for url in urls
    ]


def read_split(
    plan: DataPlan,
    *,
    on_error: str,
    read_cpus: float = 0.25,
    limit: int | None = None,
    rows_per_block: int | None = None,
    shuffle_seed: int | None = None,
    epoch: int = 0,
    columns: ColumnJoin | None = None,
) -> Any:
    """A Ray Dataset of verified, decoded rows (see module docstring) for ``plan``.

    One read task per shard (``read_cpus`` CPUs each) emits blocks of ``rows_per_block`` rows
    (default: the whole shard), and so do the stages appended to the dataset (see
    :mod:`reldrop.pipeline.data.blocks`: an explainer task hands its rows on a block at a time,
    so a block larger than the staleness gate's window would stall the gate).
    ``shuffle_seed``/``epoch``: this epoch's order (``None``: manifest order, as for
    evaluation). ``columns``: join a key-aligned column (precomputed relevance) into the rows.
    """
    import ray

    if not plan.urls:
        raise ValueError(f"no readable shards left for split {plan.split!r} of {plan.root!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0; got {epoch}")
    schema = RowSchema.of(plan.manifest, on_error=on_error, rows_per_block=rows_per_block,
                          column=None if columns is None else columns.column)
    tasks = shard_tasks(plan, shuffle_seed=shuffle_seed, epoch=epoch, columns=columns)
    ds: Any = ray.data.from_items(
        [{"task": t.to_json()} for t in tasks], override_num_blocks=len(tasks)
    )
    if rows_per_block is not None:
        cut_blocks(ds, rows_per_block, schema.row_bytes)
    ds = ds.map_batches(
        read_shards, fn_kwargs={"schema": schema}, batch_size=1, batch_format="numpy",
        num_cpus=read_cpus,
    )
    if limit is not None:
        ds = ds.limit(limit)
    return ds


def model_inputs(images: np.ndarray | torch.Tensor, normalization: Any) -> torch.Tensor:
    """uint8 images -> normalised float (model space); float point clouds pass through."""
    if isinstance(images, np.ndarray):
        # Ray hands out read-only views of its blocks; torch wants writable memory
        images = np.require(images, requirements=["C", "W"])
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        return normalization.to_model(t)
    return t.float()
