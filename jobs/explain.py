"""``reldrop explain``: relevance from a frozen checkpoint, written once as column shards.

``reldrop train --mode precomputed --precomputed URL`` reuses them every epoch. The flags come
from :class:`reldrop.pipeline.job_configs.ExplainConfig`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, parse_with_config
from reldrop.jobs._flags import add_config_flags
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    from reldrop.pipeline.job_configs import ExplainConfig

    parser = new_parser("reldrop explain", __doc__ or "")
    add_config_flags(parser, ExplainConfig)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.explanation.precompute import explain_dataset
    from reldrop.pipeline.job_configs import ExplainConfig, from_namespace

    configure_storage(args.storage_options)
    cfg = from_namespace(ExplainConfig, args)
    summary = explain_dataset(
        cfg.checkpoint, cfg.data, out_url=cfg.out, composite=cfg.composite,
        batch_size=cfg.batch_size, on_error=cfg.on_error,
        model=cfg.model, trust_model_code=cfg.trust_model_code,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("explain"))
