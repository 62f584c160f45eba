"""Block sizes for streaming through the explainer stage: about one explainer batch per block.

Ray Data merges what a map task yields into blocks of ``DataContext.target_max_block_size``
bytes (128 MiB by default), whatever the task's batch size. An explainer task hands on its
rows only when a block is complete, so with the default a whole shard (or a whole file of a
user's dataset) is explained before the trainer sees any of it, while the staleness gate admits
only a few batches ahead of the trainer: the gate stalls until its timeout lets rows through.
Setting the dataset's own block target just below one batch's bytes makes every yielded batch
a block (or two: Ray slices a block only past 1.5x the target), in the read tasks and in the
explainer tasks alike. ``ds.context`` belongs to the dataset and the stages appended to it,
so other datasets keep Ray's default. (``Dataset.repartition(target_num_rows_per_block=)``
would be the public way, but it runs as its own 1-CPU operator unless its resources equal the
stage's, and on a small cluster that operator waits for a CPU forever.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["cut_blocks", "schema_row_bytes"]


def cut_blocks(ds: Any, rows: int, row_bytes: int) -> Any:
    """Make the blocks of ``ds`` (and of every stage appended to it) about ``rows`` rows of
    ``row_bytes`` each; returns ``ds``."""
    if rows < 1 or row_bytes < 1:
        raise ValueError(f"cut_blocks(rows={rows}, row_bytes={row_bytes}): expected both >= 1")
    ds.context.target_max_block_size = max(1, rows * row_bytes - 1)
    return ds


def schema_row_bytes(schema: Any) -> int:
    """Bytes of one row's fixed-size columns (tensors of a fixed shape, numbers, flags) in a Ray
    Data schema; strings and variable-shape tensors count 0, so a batch only ever exceeds the
    block target it gives."""
    total = 0
    for dtype in getattr(schema, "types", ()):
        shape = getattr(dtype, "shape", None)
        scalar = getattr(dtype, "value_type", None)  # Ray's ArrowTensorType(V2)
        if shape is not None and scalar is not None and all(isinstance(d, int) for d in shape):
            total += math.prod(shape) * np.dtype(scalar.to_pandas_dtype()).itemsize
            continue
        try:
            total += max(0, int(dtype.bit_width) // 8)
        except (ValueError, AttributeError, TypeError):  # strings, lists: no fixed width
            pass
    return total
