"""``reldrop explain``: relevance from a frozen checkpoint, written once as column shards that
``reldrop train --mode precomputed --precomputed URL`` reuses every epoch."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, parse_with_config, positive_int
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop explain", __doc__ or "")
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by reldrop train")
    p.add_argument("--data", required=True, help="dataset ROOT or ROOT#split (default split train)")
    p.add_argument("--out", default=None, help="root URL for the column shards (default: ROOT)")
    p.add_argument("--composite", default="reference", help="LRP composite name")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"))
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.explanation.precompute import explain_dataset

    configure_storage(args.storage_options)
    summary = explain_dataset(
        args.checkpoint, args.data, out_url=args.out, composite=args.composite,
        batch_size=args.batch_size, on_error=args.on_error,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("explain"))
