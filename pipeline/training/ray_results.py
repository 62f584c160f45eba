"""Ray Train's own folder of a run (``OUT/ray_results/reldrop-RUN``): one per output folder,
and what an interrupted run had reached.

Ray Train writes each run's checkpoints under ``storage_path/name``; with a fresh name per run
an output folder gained a folder per run. :func:`clear_previous_runs` removes the earlier
runs' folders (ours, ``reldrop-*``) before a run starts, so a rerun into the same ``--out``
replaces them. :func:`last_checkpoint` reads the newest epoch checkpoint's progress, which is
as close as the driver can know where an interrupted run was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "clear_previous_runs", "last_checkpoint"]

PREFIX = "reldrop-"


def clear_previous_runs(storage: str, keep: str) -> list[str]:
    """Remove ``storage/reldrop-*`` folders other than ``keep`` (any fsspec URL); return them."""
    from reldrop.pipeline.data.fs import resolve

    fs, root = resolve(storage)
    if not fs.exists(root):
        return []
    removed = []
    for path in fs.ls(root, detail=False):
        name = str(path).rstrip("/").rpartition("/")[2]
        if name.startswith(PREFIX) and name != keep and fs.isdir(path):
            fs.rm(path, recursive=True)
            removed.append(str(path))
    return removed


def last_checkpoint(out: str | Path) -> dict[str, Any] | None:
    """``{"epochs": finished epochs, "step": trainer step, "path": folder}`` of the newest
    epoch checkpoint under local ``out/ray_results``, or None."""
    states = list(Path(str(out).removeprefix("file://")).glob(
        f"ray_results/{PREFIX}*/checkpoint_*/train_state.json"))
    for path in sorted(states, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            saved = json.loads(path.read_text())
            return {"epochs": len(saved["epochs"]), "step": int(saved["step"]),
                    "path": str(path.parent)}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
