"""The public stage API with a model and a Ray Train loop written here, as a user would: rows
carry model versions, staleness stays within the plan's bound, the drop mask is applied with
the fill, the loss falls. Also runs docs/api.md's example verbatim."""

from __future__ import annotations

import re
import runpy
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reldrop.normalization import Normalization
from reldrop.pipeline import StagePlan, WeightPublisher, add_explainer_stage, apply_drop

pytestmark = [pytest.mark.ray, pytest.mark.slow]

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
NORM = Normalization(mean=(0.25,), std=(0.35,))
FILL = -7.0


class QuadrantNet(nn.Module):
    """A user's model: not one of reldrop's, BatchNorm inside a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AvgPool2d(4), nn.Flatten())
        self.classifier = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _dataset(n: int = 256, blocks: int = 8):  # type: ignore[no-untyped-def]
    import ray

    rng = np.random.default_rng(1)
    images = rng.integers(0, 80, (n, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 4, n)
    for image, label in zip(images, labels):
        image[0, 8 * (label // 2):8 * (label // 2) + 8, 8 * (label % 2):8 * (label % 2) + 8] += 150
    return ray.data.from_items([{"image": im, "label": int(y)} for im, y in zip(images, labels)],
                               override_num_blocks=blocks)


def _train(config: dict) -> None:
    import ray.train
    import ray.train.torch

    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(QuadrantNet())
    device = ray.train.torch.get_device()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    publisher = WeightPublisher(config["plan"], model)
    shard = ray.train.get_dataset_shard("train")
    stats: dict = {"losses": [], "staleness": [], "versions": [], "dropped": 0, "fill_ok": True,
                   "kept_ok": True, "rows_occluded": 0, "rows": 0}
    for _ in range(config["epochs"]):
        publisher.start_epoch()
        losses = []
        for batch in shard.iter_batches(batch_size=32, batch_format="numpy"):
            x = apply_drop(batch, fill="constant", fill_value=FILL, normalization=NORM, device=device)
            dropped = torch.as_tensor(batch["dropped"]).bool().unsqueeze(1)
            plain = NORM.to_model(torch.as_tensor(batch["image"]))
            stats["fill_ok"] &= bool((x[dropped] == FILL).all())
            stats["kept_ok"] &= bool(torch.equal(x[~dropped], plain[~dropped]))
            stats["dropped"] += int(dropped.sum())
            stats["rows_occluded"] += int(dropped.flatten(1).any(1).sum())
            stats["rows"] += len(batch["label"])
            loss = nn.functional.cross_entropy(model(x), torch.as_tensor(batch["label"]).to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stats["staleness"] += publisher.staleness(batch["model_version"]).tolist()
            stats["versions"] += batch["model_version"].tolist()
            publisher.step(model, len(batch["label"]))
            losses.append(loss.item())
        stats["losses"].append(float(np.mean(losses)))
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train keeps metrics with a checkpoint
        Path(tmp, "done").write_text("1")
        ray.train.report({**stats, "publisher": dict(publisher.stats())},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


@pytest.fixture
def by_value():
    """Ship this module's classes and functions to Ray workers by value (tests/ is not on the
    workers' path; a user's script runs as __main__, which is shipped by value anyway)."""
    import ray.cloudpickle

    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


def test_own_model_and_loop_with_the_public_api(ray_local, by_value, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds, plan = add_explainer_stage(
        _dataset(), model_factory=QuadrantNet, normalization=NORM, strategy="reldrop-pixel",
        p=0.5, explainers=1, cpus=0.5, batch_size=32, max_staleness=6, sync_every=2, seed=3,
    )
    assert isinstance(plan, StagePlan) and plan.uses_weights
    print(plan.describe())
    trainer = TorchTrainer(
        _train, train_loop_config={"plan": plan, "epochs": 2},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        datasets={"train": ds}, run_config=RunConfig(storage_path=str(tmp_path)),
    )
    m = trainer.fit().metrics
    assert m["rows"] == 2 * 256
    versions = np.array(m["versions"])
    assert (versions >= 0).all() and versions.max() > 0  # every row explained by a published model
    assert len(np.unique(versions)) >= 3
    assert 0 <= max(m["staleness"]) <= plan.staleness_bound
    assert m["fill_ok"] and m["kept_ok"] and m["dropped"] > 0
    assert 0.25 < m["rows_occluded"] / m["rows"] < 0.75  # p = 0.5
    assert m["losses"][-1] < m["losses"][0]
    assert m["publisher"]["publishes"] == 1 + (2 * 8) // 2 and m["publisher"]["rejected"] == 0
    assert m["publisher"]["store_recreated"] == 0  # the store lived through the run
    assert m["publisher"]["gate_timeouts"] == 0


def test_one_large_block_does_not_stall_the_gate(ray_local, by_value, tmp_path):
    """A user's dataset as a single 256-row block (a file read whole, say) while the gate
    admits 160 rows ahead: the stage cuts its input into explainer batches, so the explainer
    hands rows on batch by batch and the gate never times out."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    one_block = _dataset(blocks=1)
    ds, plan = add_explainer_stage(
        one_block, model_factory=QuadrantNet, normalization=NORM, explainers=1, cpus=0.5,
        batch_size=32, max_staleness=6, sync_every=2, gate_timeout_s=3.0,
    )
    assert plan.max_ahead < 256
    trainer = TorchTrainer(
        _train, train_loop_config={"plan": plan, "epochs": 1},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        datasets={"train": ds}, run_config=RunConfig(storage_path=str(tmp_path)),
    )
    m = trainer.fit().metrics
    assert m["rows"] == 256 and m["publisher"]["gate_timeouts"] == 0
    assert max(m["staleness"]) <= plan.staleness_bound


def _readme_example() -> str:
    text = API_DOC.read_text()
    section = text[text.index("## Bring your own model and training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_example_runs(ray_local, tmp_path):
    script = tmp_path / "byo_example.py"
    script.write_text(_readme_example())
    namespace = runpy.run_path(str(script), run_name="__main__")
    m, plan = namespace["result"].metrics, namespace["plan"]
    assert m["max_version"] > 0 and m["publishes"] >= 3 and namespace["result"].checkpoint
    assert m["max_staleness"] <= plan.staleness_bound
    assert m["epoch_losses"][-1] < m["epoch_losses"][0]


def test_apply_drop_in_process():
    batch = {"image": np.full((2, 1, 4, 4), 255, np.uint8),
             "dropped": np.zeros((2, 4, 4), np.uint8)}
    batch["dropped"][0, 1, 2] = 1
    x = apply_drop(batch, normalization=NORM)
    assert x.dtype == torch.float32 and x[0, 0, 1, 2] == 0.0
    assert (x[1] == NORM.to_model(torch.full((1, 1, 4, 4), 255, dtype=torch.uint8))).all()
    floats = {"image": torch.ones(1, 3, 2, 2), "dropped": torch.ones(1, 2, 2, dtype=torch.bool)}
    assert (apply_drop(floats, fill="constant", fill_value=2.0) == 2.0).all()
    with pytest.raises(ValueError, match="no 'dropped' column"):
        apply_drop({"image": batch["image"]}, normalization=NORM)
    with pytest.raises(ValueError, match="pass normalization="):
        apply_drop(batch)


def test_add_explainer_stage_validates_and_sizes_the_pool(ray_local):
    import ray

    ds = ray.data.from_items([{"image": np.zeros((1, 4, 4), np.uint8), "label": 0}])
    with pytest.raises(ValueError, match=r"exactly one of model_factory=.*and spec="):
        add_explainer_stage(ds, normalization=NORM)
    with pytest.raises(ValueError, match="needs normalization="):
        add_explainer_stage(ds, model_factory=QuadrantNet)
    with pytest.raises(ValueError, match=r"explainers=0"):
        add_explainer_stage(ds, model_factory=QuadrantNet, normalization=NORM, explainers=0)
    from reldrop.pipeline.explanation.api import pool_strategy

    auto = pool_strategy("auto", cpus=0.5)
    cpus = ray.cluster_resources()["CPU"]
    assert (auto.min_size, auto.max_size) == (1, max(1, int((cpus - 1) / 0.5)))
    fixed = pool_strategy((1, 3), cpus=1.0)
    assert (fixed.min_size, fixed.max_size) == (1, 3)
    _, plan = add_explainer_stage(ds, model_factory=QuadrantNet, normalization=NORM,
                                  strategy="random-erasing", batch_size=16, train_batch_size=64)
    assert not plan.uses_weights and plan.train_batch_size == 64
