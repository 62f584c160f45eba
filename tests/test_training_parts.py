"""The trainer's parts without Ray: stale policy, accounting, DDP-safe steps, resources, report,
epoch checkpoints, and flags generated from the config."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reldrop.checkpoint import ModelSpec
from reldrop.pipeline.training.accounting import MAX_REASONS, BatchAccounting, apply_stale_policy
from reldrop.pipeline.training.config import TrainConfig
from reldrop.pipeline.training.report import (
    WorkerSummary,
    assemble_report,
    staleness_stats,
    write_json,
)
from reldrop.pipeline.training.resume import (
    TrainState,
    accounting_json,
    load_train_state,
    save_train_state,
)
from reldrop.pipeline.training.scaling import plan_resources
from reldrop.pipeline.training.step import train_step
from reldrop.regularizers import make_regularizer

# --- stale policy and accounting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "keep", "again"),
    [("pass", [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]),
     ("drop", [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]),
     ("re-explain", [1, 1, 1, 1, 0], [0, 1, 0, 0, 0])],
)
def test_stale_policy(policy: str, keep: list[int], again: list[int]) -> None:
    # step 10, bound 4: version 5 is 5 steps old (too stale); -1 = not explained; row 4 skipped
    version = np.array([9, 5, 6, -1, 1])
    valid = np.array([True, True, True, True, False])
    plan, stale = apply_stale_policy(version, valid, 10, max_staleness=4, policy=policy)
    assert stale == 1
    assert plan.keep.tolist() == [bool(k) for k in keep]
    assert plan.reexplain.tolist() == [bool(a) for a in again]


def test_stale_policy_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="stale_policy='later'"):
        apply_stale_policy(np.array([1]), np.array([True]), 1, max_staleness=1, policy="later")


def _batch(n: int, skipped: list[int], versions: list[int] | None = None) -> dict[str, np.ndarray]:
    batch = {
        "key": np.array([f"k{i}" for i in range(n)]),
        "label": np.zeros(n, dtype=np.int64),
        "skipped": np.array([i in skipped for i in range(n)]),
        "reason": np.array([f"bad {i}" if i in skipped else "" for i in range(n)]),
        "dropped": np.zeros((n, 2, 2), dtype=np.uint8),
    }
    batch["dropped"][0, 0, 0] = 1
    if versions is not None:
        batch["model_version"] = np.array(versions)
    return batch


def test_accounting_counts_everything() -> None:
    acc = BatchAccounting(max_staleness=2, stale_policy="drop", record_keys=True)
    acc.start_epoch()
    plan = acc.account(_batch(4, skipped=[3], versions=[5, 2, 4, 9]), step=5)
    assert plan.keep.tolist() == [True, False, True, False]  # row 1: 3 steps stale, row 3 skipped
    assert acc.counts == {"rows": 4, "skipped": 1, "stale": 1, "stale_dropped": 1, "occluded": 1}
    assert acc.staleness == {0: 1, 3: 1, 1: 1}  # skipped rows have no staleness
    assert acc.versions == {2, 4, 5}
    assert acc.reasons == ["bad 3"] and acc.keys == [["k0", "k1", "k2", "k3"]]


def test_accounting_keeps_a_bounded_number_of_reasons() -> None:
    acc = BatchAccounting(max_staleness=2)
    for _ in range(3):
        acc.account(_batch(40, skipped=list(range(40))), step=0)
    assert acc.counts["skipped"] == 120 and len(acc.reasons) == MAX_REASONS


# --- DDP-safe steps ------------------------------------------------------------------------------


def _tiny() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_empty_step_changes_nothing_in_a_single_process() -> None:
    model, opt = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.zeros(0, 1, 6, 6)
    out = train_step(model, opt, make_regularizer("none"), x, torch.zeros(0, dtype=torch.long), None,
                     placeholder=torch.zeros(1, 1, 6, 6))
    assert not out.stepped and out.rows == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_step_trains_and_reports() -> None:
    model, opt = _tiny()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    first = train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1])
    for _ in range(20):
        last = train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1])
    assert first.stepped and first.rows == 8
    assert last.loss_sum < first.loss_sum


def _ddp_rank(rank: int, world: int, port: int, rows: list[int], result: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    model, _ = _tiny()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)
    steps = []
    for n in rows:  # a rank with 0 rows must not desynchronise the collectives
        x, y = torch.randn(n, 1, 6, 6), torch.randint(0, 3, (n,))
        out = train_step(ddp, opt, make_regularizer("none"), x, y, None,
                         placeholder=torch.zeros(1, 1, 6, 6))
        steps.append(out.stepped)
    weights = [p.detach().flatten() for p in model.parameters()]
    result.with_suffix(f".{rank}.json").write_text(json.dumps(
        {"steps": steps, "weights": torch.cat(weights).tolist(),
         "bn": model[1].running_mean.tolist()}))
    dist.destroy_process_group()


def test_ranks_stay_in_step_when_one_has_no_rows(tmp_path: Path) -> None:
    """Rank 1's batches are all skipped twice (0 rows); both ranks finish with equal weights."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plans = {0: [4, 4, 0, 4], 1: [4, 0, 0, 4]}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, plans[r], tmp_path / "r"))
             for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    r0, r1 = (json.loads((tmp_path / f"r.{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == [True, True, False, True]  # step 3: no rank had rows
    assert np.allclose(r0["weights"], r1["weights"])


# --- resources -------------------------------------------------------------------------------------


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**kw)  # type: ignore[arg-type]


def test_cpu_resources_share_what_is_left() -> None:
    res = plan_resources(_cfg(), cluster_cpus=2, cluster_gpus=0)
    assert (res.trainer_gpus, res.explainer_gpus) == (0.0, 0.0)
    assert res.explainer_cpus == pytest.approx(0.75) and res.explainers_max == 1


def test_one_gpu_node_is_shared_by_trainer_and_explainers() -> None:
    res = plan_resources(_cfg(use_gpu=True, explainers=2), cluster_cpus=16, cluster_gpus=1)
    assert res.trainer_gpus == 0.5 and res.explainer_gpus == 0.25
    assert res.trainer_gpus + 2 * res.explainer_gpus <= 1


def test_dedicated_explainer_gpus_when_the_cluster_has_them() -> None:
    res = plan_resources(_cfg(use_gpu=True, trainers=2, explainers=4), cluster_cpus=64,
                         cluster_gpus=4)
    assert res.trainer_gpus == 1.0 and res.explainer_gpus == 0.5


def test_gpu_trainer_without_explainers_takes_a_whole_gpu() -> None:
    res = plan_resources(_cfg(use_gpu=True, mode="sync"), cluster_cpus=16, cluster_gpus=1)
    assert (res.trainer_gpus, res.explainer_gpus) == (1.0, 0.0)


def test_cpu_explainers_for_a_gpu_trainer_warn() -> None:
    with pytest.warns(UserWarning, match="bottleneck"):
        plan_resources(_cfg(use_gpu=True, explainer_gpus=0.0), cluster_cpus=16, cluster_gpus=1)


def test_auto_explainers_scale_between_bounds() -> None:
    res = plan_resources(_cfg(explainers="auto"), cluster_cpus=8, cluster_gpus=0)
    assert (res.explainers_min, res.explainers_max) == (1, 6)  # 8 - 1 trainer - 0.25 reads
    res = plan_resources(_cfg(explainers="auto", explainers_max=3), cluster_cpus=8, cluster_gpus=0)
    assert (res.explainers_min, res.explainers_max) == (1, 3) and res.autoscaling
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = plan_resources(_cfg(use_gpu=True, explainers="auto"), cluster_cpus=16, cluster_gpus=1)
    assert res.explainers_max >= 1 and res.trainer_gpus + res.explainer_gpus <= 1


# --- config validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_cpus", 0), ("explainer_gpus", -1.0), ("trainer_cpus", math.inf),
     ("explainer_cpus", math.nan), ("trainer_cpus", 0.0), ("explainers", 0),
     ("explainers", "many"), ("shuffle_buffer", -1), ("max_failures", -1)],
)
def test_resource_values_are_checked_before_ray(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        _cfg(**{field: value})


def test_config_round_trips_through_json() -> None:
    cfg = _cfg(explainers="auto", trainer_cpus=0.5, model="torchvision:resnet18")
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="no_such_module"):
        _cfg(model="no_such_module:make")
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_json({"epochs": 1, "learning_rate": 1.0})


def test_flags_come_from_the_fields_with_aliases() -> None:
    from reldrop.jobs import train

    defaults = vars(train.parse_args([]))
    for f in TrainConfig.__dataclass_fields__.values():
        if f.metadata["option"].cli:
            assert defaults[f.name] == f.default, f.name
    args = train.parse_args(["--strategy", "reldrop-block", "--apply-prob", "0.3",
                             "--reg-lambda", "2", "--explainers", "auto"])
    assert (args.augment, args.apply_prob, args.reg_lambda, args.explainers) == (
        "reldrop-block", 0.3, 2.0, "auto")
    # the points strategy keeps its own fill when none is named (a second default list lost it)
    assert TrainConfig.from_namespace(train.parse_args(["--augment", "reldrop-points"])).fill is None


# --- report and checkpoints ---------------------------------------------------------------------------


def _summary(rank: int, **kw: object) -> WorkerSummary:
    base: dict[str, object] = dict(
        rank=rank, epochs=[{"epoch": 1, "samples": 10, "steps": 3, "loss": float("nan")}],
        staleness={0: 2, 3: 1}, versions=[0, 2], counts={"rows": 12, "skipped": 2},
        skip_reasons=["x"], keys=[], wait_s=1.0, compute_s=2.0, wall_s=4.0, first_batch_s=0.5,
    )
    base.update(kw)
    return WorkerSummary(**base)  # type: ignore[arg-type]


def test_report_is_assembled_once_and_written_as_strict_json(tmp_path: Path) -> None:
    report = assemble_report(
        config=_cfg().to_json(), run_id="r", model_spec={}, workers=[_summary(1), _summary(0)],
        skipped_shards=[{"url": "u", "samples": 5, "reason": "bad"}],
        explainer_stats={"a": {"gate_timeouts": 2}}, staleness_bound=7, cluster={},
    )
    assert report.counts["seen"] == 24 and report.counts["skipped"] == 9
    assert report.counts["gate_timeouts"] == 2 and report.counts["trained"] == 20  # both workers
    assert report.staleness == staleness_stats({0: 4, 3: 2})
    path = write_json(tmp_path / "report.json", report.to_json())
    data = json.loads(path.read_text())  # strict: NaN became null
    assert data["epochs"][0]["loss"] is None and data["final"]["loss"] is None


def test_epoch_checkpoint_round_trip(tmp_path: Path) -> None:
    model, opt = _tiny()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, make_regularizer("none"), x, y, None, placeholder=x[:1])
    acc = BatchAccounting(max_staleness=2)
    acc.account(_batch(4, skipped=[1], versions=[0, 0, 1, 1]), step=1)
    state = TrainState(step=1, epochs=[{"epoch": 1, "samples": 3}])
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=3)
    save_train_state(tmp_path, model, opt, spec, state, [accounting_json(acc)])

    class _Checkpoint:  # what ray.train.Checkpoint offers
        def as_directory(self):  # noqa: ANN202
            import contextlib

            return contextlib.nullcontext(str(tmp_path))

    model2, _ = _tiny()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    state2, acc2 = TrainState(), BatchAccounting(max_staleness=2)
    load_train_state(_Checkpoint(), model2, opt2, state2, acc2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 model2.state_dict().values()))
    buf = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    buf2 = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(buf, buf2))
    assert (state2.step, state2.epochs, state2.restarts) == (1, state.epochs, 1)
    assert acc2.counts == acc.counts and acc2.staleness == acc.staleness
    assert not any(p.suffix == ".pkl" for p in tmp_path.iterdir())


@pytest.mark.parametrize(("regularizer", "flags", "expected"), [
    ("actdiff", {}, {"layers": "penultimate"}),
    ("actdiff", {"actdiff_layers": "all"}, {"layers": "all"}),
    ("gradmask", {"gradmask_target": "true-class"}, {"target": "true-class", "form": "l1"}),
    ("rrr", {"clip_grad_norm": 0.0}, {"clip_grad_norm": None}),
])
def test_method_flags_reach_the_regularizer(regularizer: str, flags: dict, expected: dict) -> None:
    cfg = TrainConfig(regularizer=regularizer, **flags)
    assert cfg.regularizer_params() == expected
    reg = make_regularizer(regularizer, **cfg.regularizer_params())
    for key, value in expected.items():
        assert getattr(reg, "clip_grad_norm" if key == "clip_grad_norm" else key) == value


def test_train_config_bound_is_the_handoff_depth_plus_publish_lag() -> None:
    cfg = TrainConfig(batch_size=16, trainers=2, explainers=2)
    assert (cfg.sync_every, cfg.max_staleness, cfg.handoff_depth) == (1, 2, 2)
    assert cfg.staleness_bound() == 2
    lagged = TrainConfig(sync_every=3, max_staleness=4)
    assert lagged.handoff_depth == 2 and lagged.staleness_bound() == 4


@pytest.mark.parametrize("kw,match", [
    ({"max_staleness": 0}, "use --mode sync"),
    ({"sync_every": 3, "max_staleness": 2}, "must be >= sync_every"),
    ({"trainers": 2, "explainers": 1}, "explainers >= --trainers"),
    ({"explainers": True}, "explainers"),
    ({"simulate_step_ms": -1.0}, "simulate_step_ms"),
    ({"simulate_lrp_ms": float("nan")}, "simulate_lrp_ms"),
    ({"explainer_wait_s": 0.0}, "explainer_wait_s"),
])
def test_train_config_refuses_impossible_handoffs(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_one_explainer_per_trainer_by_default() -> None:
    from reldrop.pipeline.training.scaling import plan_resources

    res = plan_resources(TrainConfig(trainers=3), cluster_cpus=8, cluster_gpus=0)
    assert res.explainers_min == res.explainers_max == 3


def test_bound_zero_is_fine_without_explainers() -> None:
    assert TrainConfig(mode="sync", max_staleness=0).max_staleness == 0
