"""Dataset builders by name (``decoy-mnist``, ``decoy-mnist-strong``, ``viviano-synthetic``,
``mnist``, ``digits``, ``points``, ``npz:PATH``, ``folder:PATH``), one module per builder, and
the functions that write them as shards."""

from reldrop.pipeline.data.datasets import (  # noqa: F401 (registers)
    arrays,
    digits,
    folder,
    mnist,
    points,
    shortcut,
)
from reldrop.pipeline.data.datasets._registry import (
    BuildOptions,
    DatasetSource,
    available_datasets,
    get_source,
    register_dataset,
)
from reldrop.pipeline.data.datasets.build import (
    BuildSummary,
    SplitSummary,
    build_dataset,
    ensure_dataset,
)

__all__ = [
    "BuildOptions",
    "BuildSummary",
    "DatasetSource",
    "SplitSummary",
    "available_datasets",
    "build_dataset",
    "ensure_dataset",
    "get_source",
    "register_dataset",
]
