"""``reldrop train``: train a classifier with RelDrop (or a baseline) through the Ray pipeline.

With no arguments this is the embedded demo: DecoyMNIST shards are built in a cache directory
if missing, local Ray is started, and the small CNN is trained with async ``reldrop-pixel``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import add_trust_flags, new_parser, parse_with_config
from reldrop.jobs._flags import add_config_flags
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    from reldrop.pipeline.training.config import TrainConfig

    parser = new_parser("reldrop train", __doc__ or "")
    add_config_flags(parser, TrainConfig)
    add_trust_flags(parser, model_flag=False)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.training.config import TrainConfig
    from reldrop.pipeline.training.driver import run_training  # heavy import

    configure_storage(args.storage_options)
    config = TrainConfig.from_namespace(args)
    run_training(config)
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("train"))
