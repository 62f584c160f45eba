"""``reldrop compare``: every method over the same seeds, a hyperparameter search, or the staleness study.

Trains every method (augmentations sync and async, trainer-side
regularizers) over the same seeds on DecoyMNIST, evaluates each final checkpoint and writes
``OUT/compare.json``, the mean ± std table ``OUT/compare.md`` and the bar plot ``OUT/compare.png``.

The defaults are a small comparison for a 2-CPU machine: 24 trainings of 1-2 minutes each.
Trainings run on Ray one after another; ``--parallel K`` runs K at once on a cluster large
enough for it.

``--search quick|full`` instead searches each method's hyperparameters in this process (no
Ray, the in-loop way): per method a grid (log-scale weights, RelDrop p/alpha/beta) x seeds, the
winner chosen on the in-distribution ``val`` split only, written to ``OUT/search.json`` and
``OUT/search.md``. It needs ``--data`` with splits train, val, test-id, test-ood (or the
older names), e.g.
``reldrop make-shards --dataset viviano-synthetic --out data/viviano``.

``--staleness`` runs the staleness study in this process: the baseline, in-loop RelDrop and
RelDrop explained with weights as stale as each ``--bounds`` x ``--intervals`` pair allows,
over the same seeds, written to ``OUT/staleness.json``, ``.md`` and ``.png`` (the OOD gain kept
relative to in-loop RelDrop). ``--methods`` names the one RelDrop strategy (default
``reldrop-pixel``), ``--params`` its settings as JSON.
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


def _method_list(text: str) -> list[str]:
    """``a,b,c`` -> known method names (argparse turns the error into a usage message)."""
    from reldrop.pipeline.studies.compare import METHODS  # noqa: PLC0415
    from reldrop.pipeline.studies.search import GRIDS  # noqa: PLC0415

    names = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS and m not in GRIDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{unknown or text!r}: expected comma-separated names from {list(METHODS)} "
            f"(with --search: from {list(GRIDS)})"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("reldrop compare", __doc__ or "")
    p.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated method names (default: all of the chosen mode)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1, the same for every method")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=2000, help="use at most N training samples")
    p.add_argument("--eval-limit", type=int, default=200,
                   help="in-distribution samples for the occlusion curve and mask share")
    p.add_argument("--data", default=None,
                   help="dataset ROOT (or ROOT#split: the studies use every split of ROOT) with "
                   "splits train, test-id, test-ood (default: the demo data in the cache dir)")
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once (Ray tasks)")
    p.add_argument("--address", default=None, help="Ray address to join (default: start local Ray)")
    p.add_argument("--search", choices=("off", "quick", "full"), default="off",
                   help="search each method's hyperparameters in process (quick or full grid), "
                   "selecting on the in-distribution val split")
    p.add_argument("--tol", type=float, default=0.01,
                   help="--search: strongest setting within TOL of the best val accuracy wins")
    p.add_argument("--model", default="small-cnn", help="--search: model name")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="adam",
                   help="--search: optimizer of every run (adam: as the gradient penalties' "
                        "reference code; sgd: momentum 0.9, weight decay 5e-4)")
    p.add_argument("--lr", type=float, default=1e-3, help="--search: learning rate of every run")
    p.add_argument("--grid", action="append", default=[], metavar="METHOD=V1,V2",
                   help="--search: replace METHOD's grid by these values (lambda for a "
                   "regularizer, p for an augmentation); repeatable")
    p.add_argument("--options", action="append", default=[], metavar="METHOD=JSON",
                   help="--search: add these method options to every grid point of METHOD, e.g. "
                   "gradmask='{\"form\": \"original\"}'; repeatable")
    p.add_argument("--readme", default=None, metavar="FILE#NAME",
                   help="--search/--staleness: also write the table between the "
                   "'<!-- results:NAME -->' markers of FILE, with this command and the machine")
    p.add_argument("--staleness", action="store_true",
                   help="run the staleness study (in process) instead of the comparison")
    p.add_argument("--bounds", type=_int_list, default=[1, 2, 4, 8, 16],
                   help="--staleness: staleness bounds in trainer steps")
    p.add_argument("--intervals", type=_int_list, default=[1, 2, 4],
                   help="--staleness: weight publish intervals in trainer steps")
    p.add_argument("--batch-size", type=int, default=64,
                   help="--search, --staleness: trainer batch size")
    p.add_argument("--params", type=_json_object, default={},
                   help="--staleness: the RelDrop strategy's settings as a JSON object "
                   "(default: its own defaults)")
    add_trust_flags(p, model_flag=False)
    return p


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def _json_object(text: str) -> dict[str, object]:
    import json  # noqa: PLC0415

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object like '{{\"p\": 1.0}}'")
    return value


def _grids(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    from reldrop.pipeline.studies.search import GRIDS  # noqa: PLC0415

    grids: dict[str, list[dict[str, float]]] = {}
    for item in items:
        method, _, values = item.partition("=")
        key = "p" if method.startswith(("reldrop-", "random-")) else "lam"
        try:
            grids[method] = [{key: float(v)} for v in values.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--grid {item!r}: expected METHOD=V1,V2 with numbers")
        if method not in GRIDS or not grids[method]:
            parser.error(f"--grid {item!r}: expected METHOD=V1,V2 with METHOD in {list(GRIDS)}")
    return grids


def _with_options(parser: argparse.ArgumentParser, grids: dict[str, list[dict]],
                  items: Sequence[str], quick: bool) -> dict[str, list[dict]]:
    """``grids`` with each ``--options METHOD=JSON`` of ``items`` merged into every point of
    METHOD's grid (the given one or the built-in quick / full one)."""
    from reldrop.pipeline.studies.search import GRIDS, grid_points  # noqa: PLC0415

    grids = dict(grids)
    for item in items:
        method, _, text = item.partition("=")
        if method not in GRIDS:
            parser.error(f"--options {item!r}: expected METHOD=JSON with METHOD in {list(GRIDS)}")
        try:
            options = _json_object(text)
        except argparse.ArgumentTypeError as err:
            parser.error(f"--options {method}=...: {err}")
        points = grid_points(method, quick, grids)
        grids[method] = [{**point, **options} for point in points]
    return grids


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    _data_root(args)
    # the README records the command that made a table: this job's own arguments, not the
    # process's (under pytest or a notebook sys.argv is something else)
    args.command = shlex.join(["reldrop", "compare", *(sys.argv[1:] if argv is None else argv)])
    if args.staleness:
        return _staleness_args(parser, args)
    from reldrop.pipeline.studies.compare import METHODS  # noqa: PLC0415 (torch: after --help)
    from reldrop.pipeline.studies.search import GRIDS  # noqa: PLC0415

    known = GRIDS if args.search != "off" else METHODS
    if args.methods is None:
        args.methods = list(known)
    wrong = [m for m in args.methods if m not in known]
    if wrong:
        parser.error(f"--methods {wrong} not known with --search {args.search}; expected {list(known)}")
    if args.search != "off" and not args.data:
        parser.error("--search needs --data ROOT (splits train, val, test-id, test-ood)")
    args.grid = _with_options(parser, _grids(parser, args.grid), args.options,
                              quick=args.search == "quick")
    if args.readme is not None and args.search == "off":
        parser.error("--readme works with --search or --staleness")
    if (args.grid or args.options) and args.search == "off":
        parser.error("--grid and --options work with --search quick|full")
    for flag, value in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--limit", args.limit),
                        ("--eval-limit", args.eval_limit), ("--parallel", args.parallel)):
        if value < 1:
            parser.error(f"{flag} {value}; expected an integer >= 1")
    return args


def _data_root(args: argparse.Namespace) -> None:
    """``--data`` as ``train`` takes it: ``ROOT`` or ``ROOT#split``; the studies read several
    splits of ROOT, so a ``#split`` names the dataset and is dropped (with a note)."""
    if args.data and "#" in args.data:
        root, _, split = args.data.rpartition("#")
        print(f"reldrop compare: --data {args.data}: using every split of {root} "
              f"(#{split} ignored)", file=sys.stderr)
        args.data = root


def _staleness_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    args.methods = args.methods or ["reldrop-pixel"]
    if len(args.methods) != 1 or not args.methods[0].startswith("reldrop-"):
        parser.error(f"--staleness --methods {args.methods}: expected one of reldrop-pixel, "
                     "reldrop-block, reldrop-patch")
    if not args.data:
        parser.error("--staleness needs --data ROOT (splits train, val, test-id, test-ood)")
    if args.search != "off":
        parser.error("--staleness and --search are separate studies; give one")
    if args.readme is not None and "#" not in args.readme:
        parser.error(f"--readme {args.readme!r}: expected FILE#NAME, e.g. README.md#staleness")
    if min(args.seeds, args.epochs, args.batch_size) < 1:
        parser.error(f"--seeds {args.seeds} --epochs {args.epochs} --batch-size {args.batch_size}: "
                     "expected integers >= 1")
    return args


def _splice(target: str | None, table: Path, command: str) -> None:
    """Copy a study's Markdown (less its title) into ``target`` (``FILE#NAME``)."""
    if target is None:
        return
    from reldrop.pipeline.studies.readme import splice_section  # noqa: PLC0415

    body = "\n".join(line for line in table.read_text().splitlines() if not line.startswith("# "))
    print(f"updated {splice_section(target, body, command=command)} section {target.partition('#')[2]!r}")


def _main_staleness(args: argparse.Namespace) -> int:
    from reldrop.pipeline.studies.staleness import StalenessConfig, run_staleness_study  # noqa: PLC0415

    cfg = StalenessConfig(
        data=args.data, method=args.methods[0], params=args.params, bounds=tuple(args.bounds),
        intervals=tuple(args.intervals), seeds=tuple(range(args.seeds)), epochs=args.epochs,
        batch_size=args.batch_size, limit=args.limit, eval_limit=args.eval_limit, model=args.model,
        out=args.out,
    )
    result = run_staleness_study(cfg, log=lambda line: print(line, flush=True))
    print(result["table"])
    _splice(args.readme, Path(args.out) / "staleness.md", args.command)
    print(f"wrote {args.out}/staleness.json, staleness.md"
          + (", staleness.png" if result["plot"] else "") + f" in {result['wall_s']:.0f}s")
    return 0


def _main_search(args: argparse.Namespace) -> int:
    from reldrop.pipeline.studies.search import SearchConfig, run_search  # noqa: PLC0415

    cfg = SearchConfig(
        data=args.data, methods=tuple(args.methods), quick=args.search == "quick",
        seeds=tuple(range(args.seeds)), epochs=args.epochs, limit=args.limit,
        eval_limit=args.eval_limit, tol=args.tol, model=args.model, out=args.out,
        grids=args.grid, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
    )
    result = run_search(cfg, log=lambda line: print(line, flush=True))
    print(result["table"])
    _splice(args.readme, Path(args.out) / "search.md", args.command)
    print(f"wrote {args.out}/search.json, {args.out}/search.md in {result['wall_s']:.0f}s")
    return 0


def main(args: argparse.Namespace) -> int:
    from reldrop.pipeline.studies.compare import CompareConfig, run_comparison  # noqa: PLC0415 (heavy import)

    configure_storage(args.storage_options)
    if args.staleness:
        return _main_staleness(args)
    if args.search != "off":
        return _main_search(args)

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
