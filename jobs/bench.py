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

from reldrop.jobs._args import add_trust_flags, new_parser, parse_with_config
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
    p.add_argument("--model", default=None,
                   help="model of the training runs (default small-cnn; mlp with --simulate)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    p.add_argument("--sync-every", type=int, default=1, help="publish interval of the main async run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: smallest sizes
    sim = p.add_argument_group("simulated accelerator (--simulate; figures labelled simulated)")
    sim.add_argument("--simulate", action="store_true",
                     help="run none/sync/async with steps and LRP padded to --step-ms/--lrp-ms; "
                          "writes OUT/simulate.json")
    sim.add_argument("--step-ms", type=float, default=100.0, help="modelled trainer step (ms)")
    sim.add_argument("--lrp-ms", type=float, default=250.0,
                     help="modelled LRP pass per --batch-size rows (ms)")
    sim.add_argument("--trainers", type=int, default=1, help="trainer workers (DDP)")
    sim.add_argument("--explainers", type=int, default=3, help="explainer actors")
    sim.add_argument("--nodes", type=int, default=1, help="simulated nodes on this machine")
    sim.add_argument("--steps", type=int, default=60, help="trainer steps per run")
    add_trust_flags(p, model_flag=False)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_with_config(build_parser(), argv)
    args.command = "reldrop bench " + shlex.join(argv)
    return args


def _simulate(args: argparse.Namespace) -> int:
    from reldrop.pipeline.bench.simulate import SimulateConfig, run_simulation

    config = SimulateConfig(
        out=args.out if args.out != "runs/bench" else "runs/simulate", step_ms=args.step_ms,
        lrp_ms=args.lrp_ms, batch_size=args.batch_size, trainers=args.trainers,
        explainers=args.explainers, nodes=args.nodes, steps=args.steps, data=args.data,
        model=args.model or "mlp", seed=args.seed, command=args.command)
    result = run_simulation(config)
    rates = ", ".join(f"{m} {v:.0f}" for m, v in result["samples_per_s"].items() if v)
    print(f"[bench] SIMULATED device (step {config.step_ms:g} ms, LRP {config.lrp_ms:g} ms): "
          f"samples/s {rates} (ideal {result['ideal_samples_per_s']:.0f}); async efficiency "
          f"{result['efficiency'] or float('nan'):.2f}, async/sync "
          f"{result['async_over_sync'] or float('nan'):.2f}, staleness max "
          f"{(result['staleness'] or {}).get('max')}; {Path(config.out) / 'simulate.json'}",
          flush=True)
    return 0


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.bench import BenchConfig, run_bench  # heavy import

    configure_storage(args.storage_options)
    if args.simulate:
        return _simulate(args)
    args.model = args.model or "small-cnn"
    names = set(BenchConfig.__dataclass_fields__)
    config = BenchConfig(**{k: v for k, v in vars(args).items() if k in names})
    run_bench(config)
    print((Path(config.out) / "bench.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("bench"))
