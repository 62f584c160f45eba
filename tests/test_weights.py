"""The weight store's plain classes, the stage plan and the publisher, without Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from reldrop.pipeline.explanation.plan import StagePlan
from reldrop.pipeline.explanation.store import (
    ExplainerBook,
    StalenessGate,
    WeightVersions,
    shapes_of,
    validate_weights,
)


def _state(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), scale, np.float32), "b": np.zeros(3, np.float32)}


# ---- WeightVersions ----------------------------------------------------------------------------
def test_versions_only_move_forward():
    v = WeightVersions()
    assert v.latest(-1) == (-1, None)
    assert v.publish(0, "ref0", shapes_of(_state())) == 0
    assert v.latest(-1) == (0, "ref0") and v.latest(0) == (0, None)
    v.publish(4, "ref4", shapes_of(_state()))
    for bad in (4, 3, -1, 4.5, True, "5"):
        with pytest.raises(ValueError, match="not newer than 4"):
            v.publish(bad, "x", shapes_of(_state()))  # type: ignore[arg-type]
    assert v.latest(0) == (4, "ref4") and [h[0] for h in v.history] == [0, 4]


def test_rewind_accepts_the_resumed_step_again():
    v = WeightVersions()
    for version in (0, 2, 4, 6):
        v.publish(version, f"ref{version}", shapes_of(_state()))
    assert v.rewind(4) == 3 and v.latest(6) == (3, None)  # nothing to hand out until a publish
    with pytest.raises(ValueError, match="not newer than 3"):
        v.publish(2, "old", shapes_of(_state()))
    v.publish(4, "resumed", shapes_of(_state()))
    assert v.latest(6) == (4, "resumed")  # an explainer holding the lost version 6 reloads
    assert v.latest(4) == (4, None)
    assert v.rewind(9) == 4  # rewinding forward changes nothing


def test_versions_reject_other_names_and_shapes():
    v = WeightVersions()
    v.publish(1, "a", shapes_of(_state()))
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"):
        v.publish(2, "b", {"w": (2, 3), "c": (3,)})
    with pytest.raises(ValueError, match=r"'w' has shape \(3, 2\), expected \(2, 3\)"):
        v.publish(2, "b", {"w": (3, 2), "b": (3,)})
    assert v.version == 1  # a rejected publish changes nothing
    fixed = WeightVersions(expected={"w": (1,)})
    with pytest.raises(ValueError, match="missing"):
        fixed.publish(0, "a", shapes_of(_state()))


def test_validate_weights():
    validate_weights(_state(), shapes_of(_state()))
    bad = _state()
    bad["w"][0, 0] = np.nan
    with pytest.raises(ValueError, match="'w' holds non-finite values"):
        validate_weights(bad, shapes_of(_state()))
    with pytest.raises(ValueError, match="'w' is a Tensor, expected a numpy array"):
        validate_weights({"w": torch.zeros(2, 3), "b": np.zeros(3)}, shapes_of(_state()))  # type: ignore[dict-item]
    validate_weights({"n": np.array([2**40], np.int64)}, {"n": (1,)})  # integer buffers pass


# ---- StalenessGate -----------------------------------------------------------------------------
def test_gate_bounds_unconsumed_rows():
    async def scenario() -> None:
        gate = StalenessGate(max_ahead=10)
        assert await gate.acquire(6) and await gate.acquire(4)
        assert gate.outstanding == 10
        assert not await gate.acquire(1, wait_s=0.01) and gate.timeouts == 1
        await gate.consumed(5)
        assert await gate.acquire(5) and gate.outstanding == 10
        await gate.consumed(10)
        assert await gate.acquire(25)  # nothing outstanding: a batch above the bound passes
        assert not await gate.acquire(1, wait_s=0)

    asyncio.run(scenario())


def test_gate_wakes_waiters_without_polling():
    async def scenario() -> list[str]:
        gate = StalenessGate(max_ahead=4)
        await gate.acquire(4)
        order: list[str] = []

        async def explainer() -> None:
            admitted = await gate.acquire(4, wait_s=5.0)
            order.append(f"admitted {admitted}")

        task = asyncio.create_task(explainer())
        await asyncio.sleep(0.05)
        order.append("consume")
        await gate.consumed(4)
        await asyncio.wait_for(task, 1.0)
        return order

    assert asyncio.run(scenario()) == ["consume", "admitted True"]


def test_gate_reset_progress_forgets_in_flight_rows():
    async def scenario() -> None:
        gate = StalenessGate(max_ahead=8)
        await gate.acquire(8)
        waiter = asyncio.create_task(gate.acquire(8, wait_s=5.0))
        await asyncio.sleep(0.01)
        await gate.reset_progress(100)  # a new epoch: nothing is in flight
        assert await asyncio.wait_for(waiter, 1.0)
        assert (gate.produced, gate.consumed_rows) == (108, 100)

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_gate_rejects_bad_bound(bad):
    with pytest.raises(ValueError, match="max_ahead"):
        StalenessGate(max_ahead=bad)


def test_explainer_book_keeps_latest_counters():
    book = ExplainerBook()
    book.register("a", "handle-a")
    book.report("a", {"batches": 1})
    book.report("a", {"batches": 3})
    assert book.handles == {"a": "handle-a"} and book.stats == {"a": {"batches": 3}}


# ---- StagePlan ---------------------------------------------------------------------------------
def test_plan_sizes_the_gate():
    plan = StagePlan(run_id="r", train_batch_size=32, sync_every=2, max_staleness=8)
    assert plan.ahead_steps == 5 and plan.max_ahead == 5 * 32
    assert plan.staleness_bound == 5 + 2 + 1
    big = StagePlan(run_id="r", train_batch_size=32, explainer_batch_size=128, max_staleness=4)
    assert big.max_ahead == 2 * 32 + 3 * 128  # the floor that keeps the stream live
    assert big.staleness_bound == -(-big.max_ahead // 32) + 3
    assert "staleness bound" in plan.describe() and plan.to_json()["max_ahead"] == 160


@pytest.mark.parametrize("kw,match", [
    ({"run_id": ""}, "run_id"), ({"train_batch_size": 0}, "train_batch_size"),
    ({"sync_every": 0}, "sync_every"), ({"max_staleness": -1}, "max_staleness"),
    ({"explainer_batch_size": 0}, "explainer_batch_size"),
])
def test_plan_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        StagePlan(**({"run_id": "r", "train_batch_size": 8} | kw))  # type: ignore[arg-type]


# ---- the actor and its typed client (one small actor on the shared cluster) ---------------------
@pytest.mark.ray
def test_actor_and_typed_client(ray_local):
    from reldrop.pipeline.explanation.weights import WeightStoreClient

    trainer = WeightStoreClient("typed", max_ahead=8, create=True)
    explainer = WeightStoreClient("typed", max_ahead=8, create=False)
    try:
        # the actor's first start may take long on a loaded 2-core machine: wait for it once
        assert trainer.version(timeout=120.0) == -1
        assert explainer.latest(-1) is None  # nothing published yet
        assert trainer.publish(0, _state()) == 0
        version, weights = explainer.latest(-1)  # type: ignore[misc]
        assert version == 0 and np.array_equal(weights["w"], _state()["w"])
        assert explainer.latest(0) is None
        with pytest.raises(ValueError, match="not newer than 0"):
            trainer.publish(0, _state(2.0))
        with pytest.raises(ValueError, match=r"'w' has shape \(3, 2\)"):
            trainer.publish(1, {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
        bad = _state()
        bad["b"][0] = np.inf
        with pytest.raises(ValueError, match="non-finite"):
            trainer.publish(1, bad)
        # the store itself checks shapes too (a publisher that skipped put's validation)
        import ray

        with pytest.raises(ValueError, match="missing"):
            trainer.call("publish", 1, [ray.put({"w": np.zeros((2, 3), np.float32)})])
        assert explainer.acquire(8, 0.0) is True, explainer.failures
        assert explainer.acquire(1, 0.05) is False  # 8 outstanding: timed out, counted
        trainer.consumed(8)
        assert explainer.acquire(4, 5.0) is True
        assert trainer.reset_progress(100)
        explainer.report_explainer("e1", {"batches": 2.0})
        stats = trainer.stats()
        assert stats is not None and stats["version"] == 0 and stats["gate_timeouts"] == 1
        assert (stats["produced"], stats["consumed"]) == (100, 100)
        assert trainer.explainer_stats() == {"e1": {"batches": 2.0}}
        from reldrop.pipeline.explanation.weights import STORE_NAMESPACE, store_name

        ray.kill(ray.get_actor(store_name("typed"), namespace=STORE_NAMESPACE))  # the store dies:
        assert explainer.latest(0) is None and explainer.acquire(1, 0.0) is None
        assert trainer.publish(3, _state()) == 3 and trainer.recreated == 1  # recreated it
        assert explainer.latest(0)[0] == 3  # type: ignore[index]
    finally:
        trainer.kill()
