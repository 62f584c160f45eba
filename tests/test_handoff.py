"""The shallow hand-off (pipeline/explanation/handoff.py), in process: bounds and faults."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from reldrop.checkpoint import ModelSpec
from reldrop.normalization import Normalization
from reldrop.occlusion import OcclusionConfig
from reldrop.pipeline.explanation.handoff import Handoff, LocalTransport, split_rows
from reldrop.pipeline.explanation.stage import ExplainerStage, StageConfig


class FakeExplainer:
    """Records what it explained; marks every row with the version it holds."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.version = -1
        self.delay_s = delay_s
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def load(self, version: int, weights: Any) -> None:
        assert "weight" in weights  # a numpy state dict of the trainer's model
        self.version = version

    def explain(self, chunk: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        n = len(chunk["label"])
        with self.lock:
            self.keys.extend(str(k) for k in chunk["key"])
        return {"dropped": np.zeros((n, 2, 2), dtype=np.uint8), "fallback": np.zeros(n, bool),
                "model_version": np.full(n, self.version, dtype=np.int64)}


def _raw(batches: int, rows: int = 16, pulled: list[int] | None = None) -> Any:
    for b in range(batches):
        if pulled is not None:
            pulled.append(b)
        yield {"key": np.array([f"k{b}-{i}" for i in range(rows)]),
               "image": np.zeros((rows, 1, 2, 2), np.uint8), "label": np.zeros(rows, np.int64),
               "skipped": np.zeros(rows, bool)}


def _in_loop(step: list[int]) -> Any:
    def explain(chunk: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        n = len(chunk["label"])
        return {"dropped": np.ones((n, 2, 2), np.uint8), "fallback": np.zeros(n, bool),
                "model_version": np.full(n, step[0], dtype=np.int64)}
    return explain


def _train(handoff: Handoff, batches: Any, *, after_step: Any = None) -> tuple[list[int], list[str]]:
    """A trainer loop: staleness of every row (step - model_version) and the keys in order."""
    model = nn.Linear(2, 2)
    step = 0
    handoff.publish(model, step)
    stale: list[int] = []
    keys: list[str] = []
    for batch in handoff.batches(batches, epoch=0):
        stale.extend(int(step - v) for v in batch["model_version"])
        keys.extend(str(k) for k in batch["key"])
        step += 1
        if after_step is not None:
            after_step(step)
        handoff.publish(model, step)
    handoff.close()
    return stale, keys


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_staleness_is_bounded_by_the_depth_and_reaches_it(depth: int) -> None:
    explainers = [FakeExplainer(), FakeExplainer(), FakeExplainer()]
    handoff = Handoff(LocalTransport(explainers), depth=depth, min_chunk_rows=4)
    stale, keys = _train(handoff, _raw(12))
    assert max(stale) == depth and min(stale) == 0
    assert stale[-16:] == [depth] * 16  # steady state: exactly depth steps old
    assert keys == [f"k{b}-{i}" for b in range(12) for i in range(16)]  # once each, in order
    assert sorted(k for e in explainers for k in e.keys) == sorted(keys)
    assert all(e.keys for e in explainers)  # every batch was cut across the explainers
    assert handoff.stats.chunks == 12 * 3 and handoff.stats.in_loop_rows == 0


def test_at_most_depth_plus_one_batches_are_in_flight() -> None:
    pulled: list[int] = []
    handoff = Handoff(LocalTransport([FakeExplainer()]), depth=2)
    model = nn.Linear(2, 2)
    handoff.publish(model, 0)
    for i, _ in enumerate(handoff.batches(_raw(10, pulled=pulled), epoch=0)):
        assert len(pulled) - i <= 3  # this batch and two being explained
    handoff.close()


def test_a_dead_explainer_loses_nothing_its_chunks_go_to_another() -> None:
    explainers = [FakeExplainer(delay_s=0.01), FakeExplainer(delay_s=0.01)]
    transport = LocalTransport(explainers)
    handoff = Handoff(transport, depth=2, min_chunk_rows=4)
    stale, keys = _train(handoff, _raw(10),
                         after_step=lambda s: transport.dead.add(1) if s == 3 else None)
    assert keys == [f"k{b}-{i}" for b in range(10) for i in range(16)]
    assert handoff.stats.lost >= 1 and handoff.stats.resent >= 1
    assert handoff.stats.in_loop_rows == 0 and max(stale) <= 2


def test_no_live_explainer_means_in_loop_explanation_counted() -> None:
    transport = LocalTransport([FakeExplainer()])
    step = [0]
    handoff = Handoff(transport, depth=2, fallback=_in_loop(step))

    def kill(s: int) -> None:
        step[0] = s
        if s == 2:
            transport.dead.add(0)

    stale, keys = _train(handoff, _raw(6), after_step=kill)
    assert len(keys) == 6 * 16 and len(set(keys)) == 6 * 16
    assert handoff.stats.in_loop_rows > 0 and max(stale) <= 2


def test_a_slow_explainer_is_replaced_by_the_loop_after_the_wait() -> None:
    step = [0]
    handoff = Handoff(LocalTransport([FakeExplainer(delay_s=0.5)]), depth=1, wait_s=0.05,
                      first_wait_s=0.05, fallback=_in_loop(step))
    stale, keys = _train(handoff, _raw(3), after_step=lambda s: step.__setitem__(0, s))
    assert len(keys) == 48 and handoff.stats.in_loop_rows > 0 and max(stale) <= 1


def test_without_a_fallback_a_silent_explainer_is_an_error() -> None:
    transport = LocalTransport([FakeExplainer()])
    transport.dead.add(0)
    handoff = Handoff(transport, depth=1)
    with pytest.raises(RuntimeError, match="no explainer answered"):
        _train(handoff, _raw(2))


def test_bad_depth_and_no_publish_are_refused() -> None:
    with pytest.raises(ValueError, match="depth=0"):
        Handoff(LocalTransport([FakeExplainer()]), depth=0)
    handoff = Handoff(LocalTransport([FakeExplainer()]), depth=1)
    with pytest.raises(RuntimeError, match="publish"):
        next(handoff.batches(_raw(1), epoch=0))


def test_split_rows_covers_every_row_once() -> None:
    for n, parts in ((64, 3), (5, 8), (1, 1), (17, 4)):
        slices = split_rows(n, parts, min_rows=2)
        assert [i for s in slices for i in range(n)[s]] == list(range(n))
        assert len(slices) <= parts


def test_real_explainers_explain_with_the_trainers_weights() -> None:
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=3,
                     normalization=Normalization(mean=(0.5,), std=(0.25,)))
    config = StageConfig(run_id="h", spec=spec.to_json(), key_column="key",
                         occlusion=OcclusionConfig(strategy="reldrop-pixel", p=1.0))
    stages = [ExplainerStage(config, connect=False) for _ in range(2)]
    handoff = Handoff(LocalTransport(stages), depth=1, min_chunk_rows=2)
    model = spec.build()
    handoff.publish(model, 7)
    rng = np.random.default_rng(0)
    raw = [{"key": np.array([f"r{i}" for i in range(6)]), "label": np.arange(6) % 3,
            "image": rng.integers(0, 255, (6, 1, 12, 12), dtype=np.uint8),
            "skipped": np.zeros(6, bool)}]
    (batch,) = list(handoff.batches(raw, epoch=0))
    assert batch["dropped"].shape[0] == 6 and batch["dropped"].any()
    assert (batch["model_version"] == 7).all()
    for stage in stages:  # the replicas hold the trainer's weights
        assert stage.replica is not None
        stage.replica.release()  # (the canonizer merges BatchNorm while registered)
        for name, value in model.state_dict().items():
            assert torch.equal(stage.model.state_dict()[name], value)  # type: ignore[union-attr]
    handoff.close()
