"""``reldrop compare``: every method over the same seeds, a hyperparameter search, or the staleness study.

Trains every method (augmentations sync and async, trainer-side
regularizers) over the same seeds on DecoyMNIST, evaluates each final checkpoint and writes
``OUT/compare.json``, the mean ± std table ``OUT/compare.md`` and the bar plot ``OUT/compare.png``.

The defaults are a small comparison for a 2-CPU machine: 24 trainings of 1-2 minutes each.
Trainings run on Ray one after another; ``--parallel K`` runs K at once on a cluster large
enough for it. (Hyperparameter searches and the staleness study are research studies, run
from a checkout: ``python -m studies.search`` and ``python -m studies.staleness``.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reldrop.jobs._args import (
    add_trust_flags,
    name_list,
    new_parser,
    parse_with_config,
    positive_int,
)
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def _methods() -> list[str]:
    from reldrop.pipeline.evaluation.compare import METHODS

    return list(METHODS)


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop compare", __doc__ or "")
    p.add_argument("--methods", type=name_list(_methods), default=None,
                   help="comma-separated method names (default: all)")
    p.add_argument("--seeds", type=positive_int, default=2,
                   help="seeds 0..N-1, the same for every method")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--limit", type=positive_int, default=2000,
                   help="use at most N training samples")
    p.add_argument("--eval-limit", type=positive_int, default=200,
                   help="in-distribution samples for the occlusion curve and mask share")
    p.add_argument("--data", default=None,
                   help="dataset ROOT (or ROOT#split: the studies use every split of ROOT) with "
                   "splits train, test-id, test-ood (default: the demo data in the cache dir)")
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.add_argument("--parallel", type=positive_int, default=1,
                   help="trainings at once (Ray tasks)")
    p.add_argument("--address", default=None, help="Ray address to join (default: start local Ray)")
    add_trust_flags(p, model_flag=False)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parse_with_config(build_parser(), argv)
    if args.methods is None:
        args.methods = _methods()
    if args.data and "#" in args.data:  # ROOT#split as train takes it: the runs use every split
        root, _, split = args.data.rpartition("#")
        print(f"reldrop compare: --data {args.data}: using every split of {root} "
              f"(#{split} ignored)", file=sys.stderr)
        args.data = root
    return args


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.evaluation.compare import CompareConfig, run_comparison  # heavy import

    configure_storage(args.storage_options)
    cfg = CompareConfig(
        methods=tuple(args.methods), seeds=tuple(range(args.seeds)), epochs=args.epochs,
        limit=args.limit, eval_limit=args.eval_limit, data=args.data, out=args.out,
        parallel=args.parallel, address=args.address,
    )
    result = run_comparison(cfg, log=lambda line: print(line, flush=True))
    print(result["table"])
    print(f"wrote {result['paths']['json']}, {result['paths']['table']}"
          + (f", {result['paths']['plot']}" if result["paths"]["plot"] else "")
          + f" in {result['wall_s']:.0f}s")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("compare"))
