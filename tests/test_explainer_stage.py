"""The explainer stage, its replica and the weight publisher in one process (no Ray): the
store is replaced by the plain classes it delegates to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reldrop.checkpoint import ModelSpec, load_numpy_state, state_to_numpy
from reldrop.occlusion import OcclusionConfig
from reldrop.pipeline.explanation.plan import StagePlan
from reldrop.pipeline.explanation.publisher import WeightPublisher, staleness
from reldrop.pipeline.explanation.replica import ExplainerReplica
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig
from reldrop.pipeline.explanation.store import WeightVersions, shapes_of, validate_weights
from reldrop.relevance import relevance


class _LocalStore:
    """The typed client's interface over the plain classes, shared by every 'process'."""

    stores: dict[str, _LocalStore] = {}

    def __init__(self) -> None:
        self.versions = WeightVersions()
        self.consumed_rows = 0
        self.resets: list[int] = []
        self.reports: dict[str, dict] = {}
        self.recreated = 0

    @classmethod
    def client(cls, run_id: str, *, max_ahead: int, create: bool, **_: object) -> _LocalStore:
        return cls.stores.setdefault(run_id, cls())

    def put(self, weights):  # type: ignore[no-untyped-def]
        validate_weights(weights, self.versions.expected or shapes_of(weights))
        return {k: v.copy() for k, v in weights.items()}

    def publish(self, version, weights):  # type: ignore[no-untyped-def]
        return self.versions.publish(version, weights, shapes_of(weights))

    def latest(self, have):  # type: ignore[no-untyped-def]
        version, payload = self.versions.latest(have)
        return None if payload is None else (version, payload)

    def acquire(self, rows, wait_s):  # type: ignore[no-untyped-def]
        return True

    def consumed(self, rows):  # type: ignore[no-untyped-def]
        self.consumed_rows += rows

    def reset_progress(self, consumed):  # type: ignore[no-untyped-def]
        self.resets.append(consumed)
        return True

    def report_explainer(self, name, stats):  # type: ignore[no-untyped-def]
        self.reports[name] = dict(stats)

    def stats(self):  # type: ignore[no-untyped-def]
        return {"gate_timeouts": 0}

    def register_explainer(self, name, handle):  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def local_store(monkeypatch):
    _LocalStore.stores = {}
    monkeypatch.setattr("reldrop.pipeline.explanation.weights.WeightStoreClient", _LocalStore.client)
    return _LocalStore.stores


def _batch(n: int, channels: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8),
            "label": rng.integers(0, 4, n), "key": np.array([f"k{seed}-{i}" for i in range(n)])}


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name,channels,size", [("small-cnn", 1, 12), ("resnet18", 3, 8)])
def test_stage_relevance_is_bitwise_direct_for_two_versions(local_store, make_model, name, channels, size):
    spec = ModelSpec(name=name, in_channels=channels, num_classes=4)
    batch = _batch(6, channels, size)
    x = spec.normalization.to_model(torch.from_numpy(batch["image"]))
    y = torch.from_numpy(batch["label"])
    trainer_model = make_model(name, channels, 4, x)
    plan = StagePlan(run_id="bitwise", train_batch_size=6, sync_every=1)
    publisher = WeightPublisher(plan, trainer_model, rank=0, world_size=1)  # publishes version 0
    stage = ExplainerStage(StageConfig(run_id="bitwise", spec=spec.to_json(),
                                       occlusion=OcclusionConfig(strategy="reldrop-pixel", p=1.0)))
    everyone = torch.ones(6, dtype=torch.bool)
    states = {}
    for version in (0, 1):
        stage._refresh()
        assert stage.version == version
        states[version] = {k: v.copy() for k, v in state_to_numpy(trainer_model).items()}
        want_model = spec.build()
        load_numpy_state(want_model, states[version])
        want = relevance(want_model.eval(), x, y, bounds=spec.normalization.bounds())
        for _ in range(2):  # the second call reuses the registered composite
            got = stage._relevance(batch, x, everyone)
            assert torch.equal(got, want)
        assert stage.replica is not None and stage.replica.registrations == version + 1
        _train_step(trainer_model, x, y)
        assert publisher.step(trainer_model, 6)  # sync_every=1: publishes version 1
    # after release the replica holds exactly the last loaded weights (the merge was undone)
    stage.replica.release()  # type: ignore[union-attr]
    held = stage.model.state_dict()  # type: ignore[union-attr]
    assert held.keys() == states[1].keys()
    assert all(np.array_equal(held[k].numpy(), states[1][k]) for k in held)


def test_replica_reload_while_registered_takes_new_weights(make_model):
    x = torch.randn(4, 1, 10, 10)
    y = torch.tensor([0, 1, 2, 3])
    a, b = make_model("small-cnn", 1, 4, x), make_model("small-cnn", 1, 4, 2 * x)
    replica = ExplainerReplica(ModelSpec(name="small-cnn", in_channels=1, num_classes=4).build(),
                               composite="epsilon_plus_flat", bounds=(-3.0, 3.0),
                               device=torch.device("cpu"))
    replica.load(state_to_numpy(a))
    first = replica.relevance(x, y)
    replica.load(state_to_numpy(b))  # while a's composite is registered
    second = replica.relevance(x, y)
    want = relevance(b, x, y, composite="epsilon_plus_flat", bounds=(-3.0, 3.0))
    assert torch.equal(second, want) and not torch.equal(first, second)
    assert replica.num_classes == 4 and replica.registrations == 2


def test_stage_randomness_is_seeded_not_per_process(local_store):
    """Two stages with one seed draw the same masks for the same batches; another seed differs."""
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=4)
    occ = OcclusionConfig(strategy="random-erasing", p=0.5)

    def masks(seed: int) -> list[np.ndarray]:
        stage = ExplainerStage(StageConfig(run_id="r", spec=spec.to_json(), occlusion=occ,
                                           use_model=False, seed=seed))
        return [stage(_batch(8, 1, 12, seed=i))["dropped"] for i in range(3)]

    one, two, other = masks(0), masks(0), masks(1)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert not all(np.array_equal(a, b) for a, b in zip(one, other))


def test_publisher_cadence_and_gate_reports(local_store):
    model = ModelSpec(name="small-cnn", in_channels=1, num_classes=4).build()
    plan = StagePlan(run_id="cadence", train_batch_size=8, sync_every=3)
    rank0 = WeightPublisher(plan, torch.nn.parallel.DataParallel(model), rank=0, world_size=2)
    rank1 = WeightPublisher(plan, model, rank=1, world_size=2)
    store = local_store["cadence"]
    rank0.start_epoch()
    published = [rank0.step(model, 8) for _ in range(7)]
    for _ in range(7):
        assert not rank1.step(model, 8)  # only rank 0 publishes
    assert published == [False, False, True, False, False, True, False]
    assert store.versions.version == 6 and [h[0] for h in store.versions.history] == [0, 3, 6]
    assert store.consumed_rows == 2 * 7 * 8 and rank0.steps == 7
    rank0.start_epoch()
    assert store.resets == [0, 2 * 7 * 8]
    assert len(rank0.publish_ms) == 3 and rank0.stats()["rejected"] == 0
    assert list(rank0.staleness(np.array([6, 3, -1]))) == [1, 4]
    assert list(staleness(torch.tensor([7]), 7)) == [0]


def test_publisher_counts_rejected_weights(local_store):
    model = ModelSpec(name="small-cnn", in_channels=1, num_classes=4).build()
    publisher = WeightPublisher(StagePlan(run_id="nan", train_batch_size=8, sync_every=1), model, rank=0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.warns(UserWarning, match="non-finite"):
        assert not publisher.step(model, 8)
    assert publisher.rejected == 1 and local_store["nan"].versions.version == 0


def test_publisher_without_model_strategy_does_nothing(local_store):
    model = ModelSpec(name="small-cnn", in_channels=1, num_classes=4).build()
    plan = StagePlan(run_id="none", train_batch_size=8, uses_weights=False)
    publisher = WeightPublisher(plan, model, rank=0)
    assert not publisher.step(model, 8) and publisher.steps == 1 and not local_store


def test_plan_type_is_checked():
    with pytest.raises(TypeError, match="plan must be a StagePlan"):
        WeightPublisher({"run_id": "x"}, torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def _keyed_stage(strategy: str, epoch: int) -> ExplainerStage:
    from reldrop.normalization import Normalization

    return ExplainerStage(StageConfig(
        run_id="keyed", occlusion=OcclusionConfig(strategy=strategy, p=0.5), use_model=False,
        normalization=Normalization(mean=(0.5,), std=(0.5,)), seed=3, key_column="key",
        epoch=epoch,
    ))


@pytest.mark.parametrize("strategy", ["random-erasing", "random-pixel"])
def test_keyed_draws_do_not_depend_on_the_batch(strategy):
    """Paired randomness: a row's occlusion is a function of (seed, epoch, key) alone, so the
    same row gets the same mask whichever batch (or process, or mode) it is drawn in."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 1, 12, 12), dtype=np.uint8)
    keys = np.array([f"k{i}" for i in range(8)])

    def run(order, epoch=0):
        batch = {"key": keys[order], "image": images[order], "label": np.zeros(len(order), np.int64)}
        out = _keyed_stage(strategy, epoch)(batch)
        return {str(k): d for k, d in zip(out["key"], out["dropped"])}

    whole, part = run(list(range(8))), run([5, 2, 7])
    assert all(np.array_equal(whole[k], part[k]) for k in part)
    assert any(whole[k].any() for k in whole)  # something was occluded
    other = run(list(range(8)), epoch=1)
    assert any(not np.array_equal(whole[k], other[k]) for k in whole)  # a new epoch, new draws
