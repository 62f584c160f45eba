"""``reldrop train``: train a classifier with RelDrop (or a baseline) through the Ray pipeline.

With no arguments this is the embedded demo: DecoyMNIST shards are built in a cache directory
if missing, local Ray is started, and the small CNN is trained with async ``reldrop-pixel``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, parse_with_config
from reldrop.pipeline.data.fs import configure_storage

__all__ = ["build_parser", "main", "parse_args"]

AUGMENTS = (
    "none",
    "random-erasing",
    "random-pixel",
    "reldrop-pixel",
    "reldrop-block",
    "reldrop-patch",
    "reldrop-points",
)
MODES = ("async", "sync", "precomputed")
STALE_POLICIES = ("pass", "drop", "re-explain")
REGULARIZERS = ("none", "gradmask", "rrr", "actdiff", "isnet", "classify-masked")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop train", __doc__ or "")
    p.add_argument("--train", default=None, help="train shard URL or directory (default: demo DecoyMNIST)")
    p.add_argument("--test", default=None, help="in-distribution test shards")
    p.add_argument("--ood-test", default=None, help="out-of-distribution test shards")
    p.add_argument("--model", default="small-cnn", help="model name (small-cnn, resnet18, pointnet)")
    p.add_argument("--augment", default="reldrop-pixel", choices=AUGMENTS)
    p.add_argument("--mode", default="async", choices=MODES)
    p.add_argument("--regularizer", default="none", choices=REGULARIZERS)
    p.add_argument("--lambda", dest="reg_lambda", type=float, default=None, help="regularizer weight")
    p.add_argument("--composite", default="reference", help="LRP composite name")
    p.add_argument("--p", dest="apply_prob", type=float, default=0.5, help="probability to occlude a sample")
    p.add_argument("--fill", default="zero", help="occlusion fill (zero, constant, noise, blur)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--trainers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--trainer-cpus", type=float, default=1.0, help="CPUs per trainer worker")
    p.add_argument("--explainers", type=int, default=1, help="explainer actors")
    p.add_argument("--explainer-cpus", type=float, default=None, help="CPUs per explainer actor")
    p.add_argument("--explainer-gpus", type=float, default=0.0, help="GPUs per explainer actor")
    p.add_argument(
        "--explainer-resource", default=None,
        help="custom Ray resource each explainer actor takes 1 unit of (e.g. 'explainer', "
        "advertised by the explainer worker group) so explainers land on those nodes",
    )
    p.add_argument("--explainer-batch-size", type=int, default=None,
                   help="rows per explainer batch (default: --batch-size)")
    p.add_argument("--sync-every", type=int, default=2, help="publish weights every S trainer steps")
    p.add_argument("--max-staleness", type=int, default=8, help="bound on trainer_step - model_version")
    p.add_argument("--stale-policy", default="pass", choices=STALE_POLICIES)
    p.add_argument("--precomputed", default=None, help="relevance column shards for --mode precomputed")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"), help="bad sample policy")
    p.add_argument("--limit", type=int, default=None, help="use at most N training samples")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--address", default=None, help="Ray address to join (default: start local Ray)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="logical CPUs of the local Ray cluster (default: all; ignored with --address)")
    p.add_argument("--record-keys", action="store_true",
                   help="list every sample key each worker trained on per epoch in the report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="output directory")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.training.driver import TrainConfig, run_training  # noqa: PLC0415 (heavy import)

    configure_storage(args.storage_options)
    config = TrainConfig.from_namespace(args)
    run_training(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
