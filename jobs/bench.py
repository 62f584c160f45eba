"""``reldrop bench``: measure what moving LRP out of the training loop costs and saves.

Runs ``none`` / ``sync`` / ``async`` training on the same model, batch and threads, a bare
zennit loop, weight-sync timing (small CNN and ResNet-18) and a staleness sweep; writes
``bench.json`` and ``bench.md`` to ``--out``. ``--quick`` finishes in a few minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from reldrop.jobs._args import new_parser, parse_with_config
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop bench", __doc__ or "")
    p.add_argument("--out", default="runs/bench", help="output directory (bench.json, bench.md)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, combos and repeats")
    p.add_argument("--gpu", action="store_true", help="also measure on the CUDA device, if any")
    p.add_argument("--data", default=None, help="train shards ROOT#split (default: build DecoyMNIST in OUT/data)")
    p.add_argument("--limit", type=int, default=None,
                   help="source samples for the built dataset (default 1000 quick, 2500 full)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training run (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved none/async/sync rounds")
    p.add_argument("--sync-repeats", type=int, default=None, help="weight publishes timed per model")
    p.add_argument("--model", default="small-cnn", help="model of the training runs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    p.add_argument("--sync-every", type=int, default=4, help="publish interval of the main async run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: smallest sizes
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_with_config(build_parser(), argv)
    args.command = "reldrop bench " + shlex.join(argv)
    return args


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.bench import BenchConfig, run_bench  # heavy import

    configure_storage(args.storage_options)
    names = set(BenchConfig.__dataclass_fields__)
    config = BenchConfig(**{k: v for k, v in vars(args).items() if k in names})
    run_bench(config)
    print((Path(config.out) / "bench.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("bench"))
