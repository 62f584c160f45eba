"""``reldrop evaluate``: accuracy, occlusion robustness and calibration of a checkpoint.

Accuracy, occlusion curves, feature utilisation and calibration, in and out of distribution,
written to ``OUT/evaluation.json`` with PNG plots. Data are a dataset ``ROOT[#split]`` (a
plain ``ROOT`` means split ``test``) or WebDataset shard URLs; the flags come from
:class:`reldrop.pipeline.job_configs.EvaluateConfig`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reldrop.jobs._args import new_parser, parse_with_config
from reldrop.jobs._flags import add_config_flags
from reldrop.pipeline.data.storage import configure_storage

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    from reldrop.pipeline.job_configs import EvaluateConfig

    parser = new_parser("reldrop evaluate", __doc__ or "")
    add_config_flags(parser, EvaluateConfig)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.evaluation.evaluate import evaluate_checkpoint  # heavy import
    from reldrop.pipeline.job_configs import EvaluateConfig, from_namespace

    configure_storage(args.storage_options)
    cfg = from_namespace(EvaluateConfig, args)
    report = evaluate_checkpoint(
        cfg.checkpoint, cfg.data, cfg.ood_test, out_dir=cfg.out, batch_size=cfg.batch_size,
        composite=cfg.composite, limit=cfg.limit, seed=cfg.seed,
        on_error=cfg.on_error,  # type: ignore[arg-type]
        device=cfg.device, plots=cfg.plots, decode=cfg.decode_options(),
        model=cfg.model, trust_model_code=cfg.trust_model_code,
    )
    for name, metrics in report["datasets"].items():
        occ = metrics["occlusion"]
        print(
            f"{name}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} "
            f"occlusion AUC relevance={occ['relevance_auc']:.4f} random={occ['random_auc']:.4f}"
        )
    print(f"wrote {cfg.out}/evaluation.json")
    return 0


if __name__ == "__main__":
    from reldrop.jobs.cli import run

    raise SystemExit(run("evaluate"))
