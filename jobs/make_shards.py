"""``reldrop make-shards``: write a dataset as WebDataset tar shards plus ``manifest.parquet``.

Datasets: decoy-mnist, mnist, digits, points, npz:PATH, folder:PATH. ``--out`` is any fsspec
URL (local path, file://, memory://, s3:// (s3fs ships with reldrop), gs:// with the gcs extra).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, nonneg_int, parse_with_config, positive_int
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop make-shards", __doc__ or "")
    p.add_argument("--dataset", required=True, help="dataset name (decoy-mnist, npz:PATH, ...)")
    p.add_argument("--out", required=True, help="dataset root URL (directory)")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--limit", type=positive_int, default=None, help="use at most N source samples")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="square image side (pad/resize)"
    )
    p.add_argument("--num-points", type=positive_int, default=256, help="points per cloud (points)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.data.datasets import build_dataset  # heavy import

    configure_storage(args.storage_options)
    summary = build_dataset(
        args.dataset,
        args.out,
        seed=args.seed,
        limit=args.limit,
        shard_size=args.shard_size,
        image_size=args.image_size,
        num_points=args.num_points,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    m = summary.manifest
    print(
        f"{m.dataset}: {m.modality} {m.input_shape} {m.dtype}, {m.num_classes} classes, "
        f"masks: {m.has_mask} -> {args.out}"
    )
    print(summary.table())
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("make-shards"))
