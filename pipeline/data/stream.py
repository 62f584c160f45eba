"""Ray Data streams: shards -> decode -> (explainer stage) -> rows the trainer consumes.

Rows carry ``key`` (str), ``image`` (uint8 C x H x W, or float32 P x C for point clouds),
``label`` (int64), ``mask`` (uint8 region of interest, when the dataset has masks),
``skipped`` (bool) and ``reason`` (str). Under ``on_error="skip"`` a bad sample becomes a
placeholder row with ``skipped=True`` that flows to the trainer, which counts it; a shard that
fails its manifest checksum is left out up front and counted. Nothing is lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reldrop.pipeline.data.codecs import SampleError, decode_row
from reldrop.pipeline.data.manifest import ChecksumError, Manifest, read_manifest, verify_shard

__all__ = ["DataPlan", "data_error", "model_inputs", "parse_data_url", "plan_split", "read_split"]


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
    """The shards of one split to read, and the shards left out (bad checksum)."""

    root: str
    split: str
    manifest: Manifest
    urls: tuple[str, ...]
    skipped_shards: tuple[dict[str, Any], ...] = field(default=())

    @property
    def num_samples(self) -> int:
        bad = {s["url"] for s in self.skipped_shards}
        return sum(i.num_samples for i in self.manifest.shards_of(self.split) if i.url not in bad)


def plan_split(url: str, default_split: str, *, on_error: str, verify: bool | None = None) -> DataPlan:
    """Find ``split``'s shards in the manifest; with ``on_error="skip"`` (or ``verify``) check
    every shard's sha256 and leave out (and record) the bad ones."""
    root, split = parse_data_url(url, default_split)
    manifest = read_manifest(root)
    if split not in manifest.splits:
        raise ValueError(f"split {split!r} not in {root!r}; it has {list(manifest.splits)}")
    infos = manifest.shards_of(split)
    urls = manifest.shard_urls(split)
    skipped: list[dict[str, Any]] = []
    if not verify and not (verify is None and on_error == "skip"):
        _check_sizes(infos, urls)  # cheap: catches truncated shards before Ray starts
    if verify or (verify is None and on_error == "skip"):
        from reldrop.pipeline.data.fs import resolve  # noqa: PLC0415

        good = []
        for info, shard_url in zip(infos, urls):
            fs, path = resolve(shard_url)
            try:
                with fs.open(path, "rb") as f:
                    verify_shard(info, f.read(), url=shard_url)
                good.append(shard_url)
            except (ChecksumError, OSError) as err:
                if on_error == "raise":
                    raise
                skipped.append({"url": shard_url, "samples": info.num_samples, "reason": str(err)})
        urls = good
    return DataPlan(root, split, manifest, tuple(urls), tuple(skipped))


def _check_sizes(infos: Any, urls: list[str]) -> None:
    from reldrop.pipeline.data.fs import resolve  # noqa: PLC0415

    for info, shard_url in zip(infos, urls):
        fs, path = resolve(shard_url)
        size = fs.size(path)
        if size != info.num_bytes:
            raise ChecksumError(
                f"shard {shard_url!r}: {size} bytes, manifest says {info.num_bytes} "
                "(truncated or replaced; --on-error skip leaves it out)"
            )


def data_error(err: BaseException) -> str | None:
    """The ``shard '...', sample '...': ...`` line inside a (Ray-wrapped) decoding error."""
    for line in str(err).splitlines():
        if "shard '" in line and ("sample '" in line or "bytes" in line):
            return line.strip()
    return None


def _decoder(manifest: Manifest, on_error: str) -> Any:
    shape = tuple(manifest.input_shape)
    dtype = np.dtype(manifest.dtype)
    mask_shape = shape[1:] if manifest.modality == "image" else shape[:1]

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        try:
            s = decode_row(row, num_classes=manifest.num_classes, expected_shape=shape)
            x = s["image"] if "image" in s else s["points"]
            out = {"key": s["key"], "image": x, "label": np.int64(s["label"])}
            if manifest.has_mask:
                if s.get("mask") is None:
                    raise SampleError(s["url"], s["key"], "has no mask but the manifest says masks exist")
                out["mask"] = np.asarray(s["mask"], dtype=np.uint8)
            out.update(skipped=False, reason="")
            return out
        except SampleError as err:
            if on_error == "raise":
                raise
            out = {"key": str(row.get("__key__")), "image": np.zeros(shape, dtype), "label": np.int64(0)}
            if manifest.has_mask:
                out["mask"] = np.zeros(mask_shape, np.uint8)
            out.update(skipped=True, reason=str(err))
            return out

    return decode


def read_split(
    plan: DataPlan,
    *,
    on_error: str,
    read_cpus: float = 0.25,
    limit: int | None = None,
    rows_per_block: int | None = None,
) -> Any:
    """A Ray Dataset of decoded rows (see module docstring) for ``plan``.

    ``rows_per_block`` splits each shard's rows into blocks of about that many rows. The
    explainer stage emits a block only when its task has explained all of it, so blocks much
    larger than the staleness gate's window would stall the gate (a whole 1000-row shard is one
    block otherwise).
    """
    import ray  # noqa: PLC0415

    from reldrop.pipeline.data.fs import arrow_filesystem  # noqa: PLC0415

    if not plan.urls:
        raise ValueError(f"no readable shards left for split {plan.split!r} of {plan.root!r}")
    fs, _ = arrow_filesystem(plan.urls[0])
    paths = [arrow_filesystem(u)[1] for u in plan.urls]
    ds = ray.data.read_webdataset(
        paths,
        filesystem=fs,
        decoder=None,
        shuffle=None,
        ray_remote_args={"num_cpus": read_cpus},
        override_num_blocks=max(len(paths), 4, -(-plan.num_samples // (rows_per_block or 1 << 30))),
    )
    ds = ds.map(_decoder(plan.manifest, on_error), num_cpus=read_cpus)
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
