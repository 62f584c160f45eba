"""Block sizing for the explainer stage: row bytes from a Ray Data schema, the block target."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reldrop.pipeline.data.blocks import cut_blocks, schema_row_bytes


class _Schema:
    def __init__(self, types: list) -> None:  # type: ignore[type-arg]
        self.types = types


def test_row_bytes_count_fixed_size_columns_only() -> None:
    from ray.data.extensions import ArrowTensorTypeV2, ArrowVariableShapedTensorType

    schema = _Schema([ArrowTensorTypeV2((1, 16, 16), pa.uint8()), pa.int64(), pa.string(),
                      ArrowTensorTypeV2((3, 4), pa.float32()), pa.int32(),
                      ArrowVariableShapedTensorType(pa.uint8(), 3)])
    assert schema_row_bytes(schema) == 256 + 8 + 0 + 48 + 4 + 0
    assert schema_row_bytes(_Schema([pa.string()])) == 0
    assert schema_row_bytes(None) == 0  # an empty dataset has no schema


class _Context:
    target_max_block_size = 128 << 20


class _Dataset:
    context = _Context()


def test_block_target_is_just_below_one_batch() -> None:
    ds = _Dataset()
    assert cut_blocks(ds, 32, 100) is ds and ds.context.target_max_block_size == 3199
    for rows, size in ((0, 10), (4, 0)):
        with pytest.raises(ValueError, match="expected both >= 1"):
            cut_blocks(_Dataset(), rows, size)
