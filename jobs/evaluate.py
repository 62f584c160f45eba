"""``reldrop evaluate``: accuracy, occlusion curves, feature utilisation and calibration of a
checkpoint, in and out of distribution, written to ``OUT/evaluation.json`` with PNG plots.

Data are shard URLs ``ROOT#split``; a plain ``ROOT`` means split ``test``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, nonneg_int, parse_with_config, positive_int
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop evaluate", __doc__ or "")
    p.add_argument("--checkpoint", required=True, help="safetensors checkpoint")
    p.add_argument("--data", required=True, help="in-distribution shards ROOT[#split]")
    p.add_argument("--ood-data", default=None, help="out-of-distribution shards ROOT[#split]")
    p.add_argument("--out", default="runs/evaluate", help="output directory")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--composite", default="reference", help="LRP composite name")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="use at most N samples per data set"
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random occlusion order")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"), help="bad sample policy")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-plots", action="store_true", help="write evaluation.json only")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.evaluation.evaluate import evaluate_checkpoint  # heavy import

    configure_storage(args.storage_options)
    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.ood_data,
        out_dir=args.out,
        batch_size=args.batch_size,
        composite=args.composite,
        limit=args.limit,
        seed=args.seed,
        on_error=args.on_error,
        device=args.device,
        plots=not args.no_plots,
    )
    for name, metrics in report["datasets"].items():
        occ = metrics["occlusion"]
        print(
            f"{name}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} "
            f"occlusion AUC relevance={occ['relevance_auc']:.4f} random={occ['random_auc']:.4f}"
        )
    print(f"wrote {args.out}/evaluation.json")
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("evaluate"))
