"""Build a registered dataset into shards at a URL: progress, summary table, build-if-missing.

Builds are staged: shards are written into a hidden sibling of the target
(``.NAME.partial-XXXXXXXX``), and only after every sample was written does the target change
(old manifest removed, old shards removed, new shards moved in, new manifest written last and
atomically). A failing build (a typo'd source path, a bad sample, a full disk) leaves an
existing dataset untouched and no half-written target. One build per target at a time: a
build holds an exclusive-create claim on its target (:mod:`reldrop.pipeline.data.claim`).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from reldrop.pipeline.data.claim import claim_dataset
from reldrop.pipeline.data.datasets._registry import BuildOptions, get_source
from reldrop.pipeline.data.fs import absolute_url, join_url, resolve
from reldrop.pipeline.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    has_manifest,
    read_manifest,
    write_manifest,
)
from reldrop.pipeline.data.shards import write_shards

__all__ = ["BuildSummary", "SplitSummary", "build_dataset", "ensure_dataset"]


@dataclass(frozen=True, kw_only=True)
class SplitSummary:
    split: str
    shards: int
    samples: int
    num_bytes: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True, kw_only=True)
class BuildSummary:
    manifest: Manifest
    splits: tuple[SplitSummary, ...]

    def table(self) -> str:
        """A plain-text table: split, shards, samples, bytes, samples/s."""
        header = f"{'split':<12} {'shards':>6} {'samples':>8} {'bytes':>12} {'samples/s':>10}"
        lines = [header, "-" * len(header)]
        for s in self.splits:
            lines.append(
                f"{s.split:<12} {s.shards:>6} {s.samples:>8} {s.num_bytes:>12} "
                f"{s.samples_per_s:>10.0f}"
            )
        return "\n".join(lines)


def _build_record(name: str, options: BuildOptions) -> str:
    return json.dumps({"name": name, **asdict(options)}, sort_keys=True)


def _staging_url(root_url: str) -> str:
    """A fresh hidden sibling of ``root_url`` to build into (inside it for a bucket root)."""
    url = absolute_url(root_url).rstrip("/")
    scheme, sep, path = url.rpartition("://")
    head, slash, name = path.rpartition("/")
    token = secrets.token_hex(4)
    if not slash or not name or (sep and not head):
        return join_url(url, f".staging-{token}")
    return f"{scheme}{sep}{head}/.{name}.partial-{token}"


def _replace_dataset(staged: Manifest, root_url: str) -> Manifest:
    """Move the complete staged dataset into ``root_url``; its manifest is written last.

    The old manifest goes first, so between the first and last step a reader finds no manifest
    (a clear "no manifest" error), never old shards mixed with new ones. Moves are renames on
    local disks; object stores copy.
    """
    fs, root = resolve(root_url)
    _, staging = resolve(staged.root_url)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    old_manifest = f"{root}/{MANIFEST_NAME}"
    if fs.exists(old_manifest):
        fs.rm(old_manifest)
    for old in fs.glob(f"{root}/*.tar"):
        fs.rm(old)
    for info in staged.shards:
        fs.mv(f"{staging.rstrip('/')}/{info.shard}", f"{root}/{info.shard}")
    final = replace(
        staged,
        root_url=root_url,
        shards=tuple(
            replace(info, url=absolute_url(join_url(root_url, info.shard)))
            for info in staged.shards
        ),
    )
    write_manifest(final)
    return final


def build_dataset(
    name: str,
    root_url: str,
    *,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int = 1000,
    image_size: int | None = None,
    num_points: int = 256,
    progress: bool = True,
    overwrite: bool = False,
) -> BuildSummary:
    """Write dataset ``name`` (see ``available_datasets()``) as shards plus manifest.

    Staged (see the module docstring): ``overwrite`` replaces an existing dataset only once the
    new one is completely written. One writer per target: the build holds the claim on
    ``root_url`` (:func:`reldrop.pipeline.data.claim.claim_dataset`); a second build of the
    same target at the same time raises :class:`~reldrop.pipeline.data.claim.DatasetBusy`.
    """
    _refuse_existing(root_url, overwrite)
    options = BuildOptions(seed=seed, limit=limit, image_size=image_size, num_points=num_points)
    source = get_source(name, options)  # a bad name or source path fails before any write
    with claim_dataset(root_url):
        _refuse_existing(root_url, overwrite)  # a writer that finished while we were starting
        meter = _Progress(source.sizes, show=progress)
        staging = _staging_url(root_url)
        fs, staging_path = resolve(staging)
        try:
            staged = write_shards(
                staging,
                {split: make() for split, make in source.splits.items()},
                dataset=source.name,
                num_classes=source.num_classes,
                class_names=source.class_names,
                shard_size=shard_size,
                build=_build_record(name, options),
                on_sample=meter,
            )
            manifest = _replace_dataset(staged, root_url)
        finally:
            meter.close()
            if fs.exists(staging_path):
                fs.rm(staging_path, recursive=True)
    return _summarize(manifest, meter.seconds())


def _refuse_existing(root_url: str, overwrite: bool) -> None:
    if has_manifest(root_url) and not overwrite:
        raise FileExistsError(
            f"{root_url!r} already holds a dataset (manifest.parquet); pass overwrite=True "
            "(--overwrite) or choose another --out"
        )


class _Progress:
    """Per-split progress bars (only when stderr is a terminal: a log file or CI gets none)
    and timings; splits are written one after another."""

    def __init__(self, sizes: Mapping[str, int], *, show: bool) -> None:
        self._sizes, self._show = sizes, show and sys.stderr.isatty()
        self._bars: dict[str, Any] = {}
        self._done: dict[str, float] = {}
        self._started = time.perf_counter()

    def __call__(self, split: str) -> None:
        self._done[split] = time.perf_counter()
        if not self._show:
            return
        if split not in self._bars:
            from tqdm.auto import tqdm

            self.close()
            self._bars[split] = tqdm(total=self._sizes.get(split), desc=split, unit="sample")
        self._bars[split].update(1)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

    def seconds(self) -> dict[str, float]:
        """Seconds per split, each timed from the end of the one before."""
        order = sorted(self._done, key=self._done.__getitem__)
        starts = [self._started, *(self._done[s] for s in order[:-1])]
        return {split: self._done[split] - start for split, start in zip(order, starts, strict=True)}


def _summarize(manifest: Manifest, seconds: Mapping[str, float]) -> BuildSummary:
    summaries = []
    for split in manifest.splits:
        shards = manifest.shards_of(split)
        summaries.append(
            SplitSummary(
                split=split,
                shards=len(shards),
                samples=sum(s.num_samples for s in shards),
                num_bytes=sum(s.num_bytes for s in shards),
                seconds=seconds[split],
            )
        )
    return BuildSummary(manifest=manifest, splits=tuple(summaries))


def ensure_dataset(
    name: str,
    root_url: str,
    *,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int = 1000,
    image_size: int | None = None,
    num_points: int = 256,
    progress: bool = False,
) -> str:
    """Build ``name`` into ``root_url`` unless a manifest is already there; return ``root_url``.

    An existing dataset built with different options raises ``ValueError`` (no silent reuse).
    """
    options = BuildOptions(seed=seed, limit=limit, image_size=image_size, num_points=num_points)
    if has_manifest(root_url):
        found = read_manifest(root_url).build
        wanted = _build_record(name, options)
        if json.loads(found) != json.loads(wanted):
            raise ValueError(
                f"{root_url!r} holds a dataset built with {found}, not {wanted}; "
                "remove it or choose another directory"
            )
        return root_url
    build_dataset(
        name, root_url, seed=seed, limit=limit, shard_size=shard_size,
        image_size=image_size, num_points=num_points, progress=progress,
    )
    return root_url
