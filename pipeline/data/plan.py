"""Which shards to read: a dataset root with ``manifest.parquet``, or any WebDataset URLs.

A data URL is one of

- ``ROOT`` or ``ROOT#split`` where ``ROOT/manifest.parquet`` exists (datasets written by
  ``reldrop make-shards``): the manifest lists the split's shards with their size, sha256 and
  sample count, and every one of them is checked while it is read;
- anything else webdataset reads: a brace URL (``s3://b/train-{000000..000146}.tar``), a list
  joined by ``::``, a glob (``data/*.tar``), a single ``.tar``, or a folder of ``.tar`` files
  (``ROOT#split`` takes its ``{split}-*.tar``). Without a manifest there is nothing to compare
  bytes with: read tasks check member names, one image and an integer label per sample and
  the image shape, not sha256, size or count (logged once per plan). The row schema (image
  shape, channels, masks) comes from the first sample of the first shard, after resizing when
  ``image_size`` is given; the class count from ``num_classes`` or else the first shard's
  largest label + 1 (logged).

Split names say what they hold: ``test`` is in distribution and ``test-ood`` out of
distribution. Datasets written before that name them ``test-id`` and ``test``; asking for a
name the dataset lacks falls back to its old spelling (:data:`SPLIT_ALIASES`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from reldrop.pipeline.data.codecs import SampleError
from reldrop.pipeline.data.columns import ColumnJoin
from reldrop.pipeline.data.decode import DecodeOptions, decode_samples, read_label
from reldrop.pipeline.data.errors import OnError, ShardError, check_on_error
from reldrop.pipeline.data.fs import resolve
from reldrop.pipeline.data.manifest import (
    ChecksumError,
    Manifest,
    ShardInfo,
    has_manifest,
    read_manifest,
)
from reldrop.pipeline.data.read import ShardTask, fetch_shard, tar_samples

__all__ = [
    "SPLIT_ALIASES",
    "DataPlan",
    "data_error",
    "expand_urls",
    "parse_data_url",
    "plan_split",
    "resolve_split",
    "shard_tasks",
]

log = logging.getLogger(__name__)

#: a split name the dataset lacks -> (the name that holds the same data in datasets of the
#: other naming, the split that proves the dataset uses that naming)
SPLIT_ALIASES = {"test-ood": ("test", "test-id"), "test-id": ("test", "test-ood")}


def parse_data_url(url: str, default_split: str) -> tuple[str, str]:
    """``ROOT#split`` -> (ROOT, split); plain ``ROOT`` uses ``default_split``."""
    if "#" in url:
        root, split = url.rsplit("#", 1)
        if not split:
            raise ValueError(f"data URL {url!r} ends in '#': name a split after it")
        return root, split
    return url, default_split


def resolve_split(split: str, available: tuple[str, ...], root: str) -> str:
    """``split`` if the dataset has it; else the same data under the other naming: ``test-ood``
    is ``test`` in a dataset with ``test-id`` (written before ``test-ood`` existed), and
    ``test-id`` is ``test`` in a dataset with ``test-ood``."""
    if split in available:
        return split
    other, marker = SPLIT_ALIASES.get(split, (None, None))
    if other in available and marker in available:
        log.info("split %r of %r is called %r there", split, root, other)
        return str(other)
    raise ValueError(f"split {split!r} not in {root!r}; it has {list(available)}")


@dataclass(frozen=True)
class DataPlan:
    """The shards of one split to read, the shards left out up front (missing, wrong size), and
    what every row looks like (``manifest``: read, or derived from the first sample where the
    shards have none, then ``verified`` is False and ``manifest.shards`` is empty)."""

    root: str
    split: str
    manifest: Manifest
    urls: tuple[str, ...]
    skipped_shards: tuple[dict[str, Any], ...] = field(default=())
    verified: bool = True
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    estimated_samples: int = 0  # without a manifest: first shard's count x shards
    check_labels: bool = True  # read tasks check labels < manifest.num_classes

    @property
    def num_samples(self) -> int:
        """Samples to read (an estimate where there is no manifest)."""
        if not self.verified:
            return self.estimated_samples
        bad = {s["url"] for s in self.skipped_shards}
        return sum(
            info.num_samples
            for info, url in zip(self.manifest.shards_of(self.split), self.manifest.shard_urls(self.split))
            if url not in bad
        )


def plan_split(
    url: str, default_split: str, *, on_error: OnError | str,
    decode: DecodeOptions | None = None, num_classes: int | None = None,
) -> DataPlan:
    """Find the split's shards (see module doc) and check what can be checked without reading
    them: sizes against the manifest (one listing), or that the URLs exist.

    A missing or resized shard raises under ``on_error="raise"``; under ``"skip"`` it is left
    out and recorded. Contents (sha256, members, sample count) are verified by the read tasks
    while they stream, so no shard is read twice.
    """
    on_error = check_on_error(on_error)
    decode = decode or DecodeOptions()
    root, split = parse_data_url(url, default_split)
    if _looks_like_root(root) and has_manifest(root):
        return _manifest_plan(root, split, on_error, decode, num_classes)
    return _webdataset_plan(url, root, split, on_error, decode, num_classes)


def _looks_like_root(root: str) -> bool:
    return not root.endswith(".tar") and not any(c in root for c in "{*?[") and "::" not in root


def _manifest_plan(root: str, split: str, on_error: OnError, decode: DecodeOptions,
                   num_classes: int | None) -> DataPlan:
    manifest = read_manifest(root)
    split = resolve_split(split, manifest.splits, root)
    if num_classes is not None and num_classes != manifest.num_classes:
        raise ValueError(f"num_classes={num_classes} but the manifest of {root!r} says "
                         f"{manifest.num_classes}; leave it unset for datasets with a manifest")
    if decode.image_size is not None and manifest.modality == "image":
        size = decode.image_size
        manifest = replace(manifest, input_shape=(manifest.input_shape[0], size, size))
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
    return DataPlan(root, split, manifest, tuple(good), tuple(skipped), decode=decode)


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


# ---- shards without a manifest ------------------------------------------------------------


def _protocol_prefix(url: str) -> str:
    return url.split("://", 1)[0] + "://" if "://" in url else ""


def expand_urls(spec: str, split: str | None = None, *, strict: bool = False) -> list[str]:
    """The shard URLs a webdataset URL names: ``::``-joined lists, brace ranges, globs, or a
    folder's ``.tar`` files: its ``{split}-*.tar`` where there are any, else all of them
    (``strict``: only those, as for an explicit ``ROOT#split``)."""
    import braceexpand  # a webdataset dependency

    urls: list[str] = []
    for part in spec.split("::"):
        for url in braceexpand.braceexpand(part.strip()):
            if any(c in url for c in "*?["):
                fs, path = resolve(url)
                urls += [_protocol_prefix(url) + p for p in sorted(fs.glob(path))]
            elif url.endswith(".tar"):
                urls.append(url)
            else:  # a folder
                fs, path = resolve(url)
                try:
                    names = sorted(p for p in fs.ls(path, detail=False) if str(p).endswith(".tar"))
                except FileNotFoundError:
                    names = []
                own = [p for p in names if split and p.rsplit("/", 1)[-1].startswith(f"{split}-")]
                prefix = _protocol_prefix(url)
                chosen = own if own or strict else names
                urls += [prefix + p if prefix and not p.startswith(prefix) else p for p in chosen]
    return urls


def _webdataset_plan(url: str, root: str, split: str, on_error: OnError,
                     decode: DecodeOptions, num_classes: int | None) -> DataPlan:
    spec = root
    urls = expand_urls(spec, split, strict="#" in url)
    if not urls:
        raise ValueError(
            f"data URL {url!r} names no shards (no .tar files, nothing matched, or an empty "
            "brace range) and there is no manifest.parquet at it; build a dataset there with "
            "`reldrop make-shards --out ROOT` or give shard URLs"
        )
    exists = {u: resolve(u)[0].exists(resolve(u)[1]) for u in urls}
    good = [u for u in urls if exists[u]]
    if not good:
        raise ValueError(f"data URL {url!r}: none of the {len(urls)} shard(s) it names exists "
                         f"(first: {urls[0]!r})")
    missing = [u for u in urls if not exists[u]]
    if missing and on_error == "raise":
        raise ShardError(missing[0], "named by the data URL but does not exist; "
                                     "--on-error skip leaves it out")
    skipped = [{"url": u, "samples": 0, "reason": "does not exist"} for u in missing]
    manifest, first_count = _derive_schema(good[0], spec, decode, num_classes)
    log.warning(
        "no manifest.parquet for %r: %d shard(s) are read without sha256, size or sample-count "
        "checks; checked per shard: member names, one image and an integer label per sample, "
        "the image shape %s", url, len(good), manifest.input_shape,
    )
    return DataPlan(spec, split, manifest, tuple(good), tuple(skipped), verified=False,
                    decode=decode, estimated_samples=first_count * len(good))


def _derive_schema(first_url: str, spec: str, decode: DecodeOptions, num_classes: int | None
                   ) -> tuple[Manifest, int]:
    """The row schema from the first shard's first decodable sample (and its class count)."""
    samples = tar_samples(fetch_shard(ShardTask(url=first_url, shard=_name(first_url))), first_url)
    if not samples:
        raise ShardError(first_url, "holds no samples")
    first = next((r for r in decode_samples(samples[:16], url=first_url, num_classes=None,
                                            options=decode) if not isinstance(r, SampleError)),
                 None)
    if first is None:  # report the first sample's own problem
        problem = decode_samples(samples[:1], url=first_url, num_classes=None, options=decode)[0]
        raise problem if isinstance(problem, SampleError) else ShardError(first_url, "unreadable")
    name = "points" if "points" in first else "image"
    array = np.asarray(first[name])
    if num_classes is None:
        labels = []
        for key, entries in samples:  # labels only: no image is decoded for this
            try:
                labels.append(read_label(entries, decode, url=first_url, key=key))
            except SampleError:
                continue
        num_classes = max(labels) + 1
        log.warning("no manifest and no num_classes for %r: %d classes, from the largest label "
                    "in %s; give num_classes (--num-classes) if other shards have more",
                    spec, num_classes, first_url)
    manifest = Manifest(root_url=spec, dataset="webdataset", modality=name,  # type: ignore[arg-type]
                        input_shape=tuple(array.shape), dtype=str(array.dtype),
                        num_classes=num_classes, class_names=(), has_mask="mask" in first,
                        shards=())
    return manifest, len(samples)


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


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
    if plan.verified:
        all_urls = plan.manifest.shard_urls(plan.split)
        info_of: dict[str, ShardInfo | None] = dict(zip(all_urls, plan.manifest.shards_of(plan.split)))
    else:
        all_urls = list(plan.urls) + [s["url"] for s in plan.skipped_shards]
        info_of = {}
    index_of = {url: i for i, url in enumerate(all_urls)}
    urls = list(plan.urls)
    if shuffle_seed is not None:
        order = np.random.default_rng([shuffle_seed, epoch]).permutation(len(urls))
        urls = [urls[i] for i in order]
    tasks = []
    for url in urls:
        extra: dict[str, Any] = {
            "row_seed": None if shuffle_seed is None else (shuffle_seed, epoch, index_of[url]),
            "column_url": None if columns is None else columns.url(plan.split, index_of[url]),
        }
        info = info_of.get(url)
        tasks.append(ShardTask.of(info, url, **extra) if info is not None
                     else ShardTask(url=url, shard=_name(url), **extra))
    return tasks
