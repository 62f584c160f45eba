"""``reldrop make-shards``: write a dataset as WebDataset tar shards plus a manifest.

The shards are ``{split}-NNNNNN.tar`` plus ``manifest.parquet`` (sizes, sha256, counts) under
``--out``, any fsspec URL (local path, file://, memory://, s3:// (s3fs ships with reldrop),
gs:// with the gcs extra). The flags come from
:class:`reldrop.pipeline.job_configs.MakeShardsConfig`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, parse_with_config
from reldrop.jobs._flags import add_config_flags
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    from reldrop.pipeline.job_configs import MakeShardsConfig

    parser = new_parser("reldrop make-shards", __doc__ or "")
    add_config_flags(parser, MakeShardsConfig)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.data.datasets import build_dataset  # heavy import
    from reldrop.pipeline.job_configs import MakeShardsConfig, from_namespace

    configure_storage(args.storage_options)
    cfg = from_namespace(MakeShardsConfig, args)
    summary = build_dataset(
        cfg.dataset, cfg.out, seed=cfg.seed, limit=cfg.limit, shard_size=cfg.shard_size,
        image_size=cfg.image_size, num_points=cfg.num_points, progress=cfg.progress,
        overwrite=cfg.overwrite,
    )
    m = summary.manifest
    print(
        f"{m.dataset}: {m.modality} {m.input_shape} {m.dtype}, {m.num_classes} classes, "
        f"masks: {m.has_mask} -> {cfg.out}"
    )
    print(summary.table())
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("make-shards"))
