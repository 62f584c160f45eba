"""Ray Data streams: shards -> verified, decoded blocks -> (explainer stage) -> the trainer.

Rows carry ``key`` (str), ``image`` (uint8 C x H x W, or float32 P x C for point clouds),
``label`` (int64), ``mask`` (uint8 region of interest, when the dataset has masks),
``skipped`` (bool) and ``reason`` (str), plus a joined column such as ``relevance`` when asked.
Every shard is verified while it is read (with a manifest: size, sha256, member names, sample
count; without: member names and the samples themselves; see
:mod:`reldrop.pipeline.data.read` and :mod:`reldrop.pipeline.data.plan`). Under
``on_error="skip"`` a bad sample becomes a placeholder row with ``skipped=True`` that flows to
the trainer, which counts it; a shard that is missing or of the wrong size is left out up front
(:attr:`DataPlan.skipped_shards`), and one that fails verification while streaming becomes
placeholder rows whose ``reason`` names the shard
(:func:`reldrop.pipeline.data.read.shard_skip` recognises them). Nothing is lost silently.

:func:`read_shards` is the public entry: any data URL (a ``make-shards`` root, or standard
WebDataset shards by brace URL, list, glob or folder) to a ``ray.data.Dataset``.

Per-epoch shuffling: ``read_split(plan, shuffle_seed=s, epoch=e)`` permutes the shard order
and the rows inside every shard with a seed derived from ``(s, e)``: a different order each
epoch, the same for the same seed, every key once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from reldrop.pipeline.data.blocks import cut_blocks
from reldrop.pipeline.data.columns import ColumnJoin
from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.errors import OnError, check_on_error
from reldrop.pipeline.data.plan import (
    DataPlan,
    data_error,
    parse_data_url,
    plan_split,
    shard_tasks,
)
from reldrop.pipeline.data.read import RowSchema, read_task_blocks

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "DataPlan",
    "data_error",
    "model_inputs",
    "parse_data_url",
    "plan_split",
    "read_shards",
    "read_split",
    "shard_tasks",
]


def read_split(
    plan: DataPlan,
    *,
    on_error: OnError | str,
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
    schema = RowSchema.of(plan.manifest, on_error=check_on_error(on_error),
                          rows_per_block=rows_per_block, decode=plan.decode,
                          column=None if columns is None else columns.column)
    if not plan.check_labels:
        schema = replace(schema, num_classes=None)
    tasks = shard_tasks(plan, shuffle_seed=shuffle_seed, epoch=epoch, columns=columns)
    ds: Any = ray.data.from_items(
        [{"task": t.to_json()} for t in tasks], override_num_blocks=len(tasks)
    )
    if rows_per_block is not None:
        cut_blocks(ds, rows_per_block, schema.row_bytes)
    ds = ds.map_batches(
        read_task_blocks, fn_kwargs={"schema": schema}, batch_size=1, batch_format="numpy",
        num_cpus=read_cpus,
    )
    if limit is not None:
        ds = ds.limit(limit)
    return ds


def read_shards(
    urls: str | Sequence[str],
    *,
    split: str = "train",
    on_error: OnError = "raise",
    image_key: str | None = None,
    label_key: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    read_cpus: float = 0.25,
    rows_per_block: int | None = None,
    shuffle_seed: int | None = None,
    epoch: int = 0,
    limit: int | None = None,
) -> ray.data.Dataset:
    """Read WebDataset tar shards as a ``ray.data.Dataset`` of decoded, verified rows.

    ``urls``: a ``make-shards`` root (``ROOT`` or ``ROOT#split``, ``split`` the default),
    standard WebDataset shards (a brace URL ``s3://b/train-{000000..000146}.tar``, a list
    joined by ``::`` or given as a sequence, a glob, a folder of ``.tar``), on any fsspec
    filesystem. ``image_key``/``label_key``: which members hold image and label (webdataset's
    extensions; default the first of ``jpg``, ``jpeg``, ``png``, ``webp``, ``npy`` and ``cls``
    then ``json``); ``image_size``: resize and centre-crop every image to a square.
    ``num_classes``: checked against every label (default: the manifest's, else none).
    Rows: ``key``, ``image`` (uint8 C x H x W), ``label`` (int64), ``mask`` where the dataset
    has masks, ``skipped`` and ``reason`` (``on_error="skip"``: placeholder rows that stand for
    left-out samples; filter on ``skipped``). With a manifest every shard's size, sha256 and
    sample count are checked; without one, member names and each sample's decoding (logged).
    The returned dataset is new: nothing the caller holds is changed.
    """
    spec = urls if isinstance(urls, str) else "::".join(urls)
    decode = DecodeOptions(image_key=image_key, label_key=label_key, image_size=image_size)
    plan = plan_split(spec, split, on_error=on_error, decode=decode, num_classes=num_classes)
    if num_classes is None and not plan.verified:  # no manifest: check labels >= 0 only
        plan = replace(plan, check_labels=False)
    return read_split(plan, on_error=on_error, read_cpus=read_cpus, limit=limit,
                      rows_per_block=rows_per_block, shuffle_seed=shuffle_seed, epoch=epoch)


def model_inputs(images: np.ndarray | torch.Tensor, normalization: Any) -> torch.Tensor:
    """uint8 images -> normalised float (model space); float point clouds pass through."""
    if isinstance(images, np.ndarray):
        # Ray hands out read-only views of its blocks; torch wants writable memory
        images = np.require(images, requirements=["C", "W"])
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        return normalization.to_model(t)
    return t.float()
