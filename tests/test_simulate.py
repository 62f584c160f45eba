"""The modelled accelerator (pipeline/simulated.py) and ``reldrop bench --simulate``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reldrop.pipeline.bench.simulate import SimulateConfig, run_simulation, summarize
from reldrop.pipeline.simulated import SimulatedDevice, padded


def test_padding_reaches_the_modelled_time_and_never_shortens() -> None:
    device = SimulatedDevice(step_ms=30.0, lrp_ms=40.0, batch_size=64)
    start = time.perf_counter()
    with padded(device.step_s()):
        pass
    assert time.perf_counter() - start >= 0.03
    assert device.lrp_s(32) == pytest.approx(0.02)
    start = time.perf_counter()
    with padded(0.001):
        time.sleep(0.02)
    assert time.perf_counter() - start >= 0.02  # real work longer than the model stays as is
    assert SimulatedDevice().lrp_s(10) is None and not SimulatedDevice().active
    assert SimulatedDevice(step_ms=1.0).to_json()["simulated"] is True


@pytest.mark.parametrize("kw,match", [
    ({"step_ms": 0}, "step_ms=0"), ({"lrp_ms": float("nan")}, "lrp_ms=nan"),
    ({"trainers": 2, "explainers": 1}, "explainers=1 < trainers=2"),
    ({"nodes": 0}, "nodes=0"), ({"modes": ("fast",)}, "modes="),
])
def test_simulate_config_refuses_bad_values(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimulateConfig(**kw)
    with pytest.raises(ValueError, match="step_ms"):
        SimulatedDevice(step_ms=-1.0)


def test_summary_ratios_against_the_ideal() -> None:
    cfg = SimulateConfig(step_ms=100.0, lrp_ms=250.0, batch_size=64, trainers=2, explainers=6)
    runs = {m: {"samples_per_s": v, "trainer_wait_fraction": w, "staleness": {"max": 2},
                "publish_ms": {"p50": 1.0}}
            for m, v, w in (("none", 1200.0, 0.05), ("sync", 380.0, 0.0), ("async", 1150.0, 0.06))}
    s = summarize(cfg, runs)
    assert s["ideal_samples_per_s"] == 1280.0 and s["simulated"] is True
    assert s["efficiency"] == pytest.approx(1150 / 1280)
    assert s["async_over_sync"] == pytest.approx(1150 / 380)
    assert s["ideal_async_over_sync"] == 3.5 and s["staleness"] == {"max": 2}


@pytest.mark.ray
@pytest.mark.slow
def test_simulation_writes_its_figures(ray_local, tmp_path: Path) -> None:
    """A short simulated run through the real pipeline: modelled times reach the trainer and
    the explainers, the bound holds, the report says simulated."""
    cfg = SimulateConfig(out=str(tmp_path / "sim"), step_ms=60.0, lrp_ms=60.0, steps=12,
                         batch_size=32, explainers=1, modes=("sync", "async"))
    result = run_simulation(cfg)
    saved = json.loads((tmp_path / "sim" / "simulate.json").read_text())
    assert saved["simulated"] is True and saved["ideal_samples_per_s"] == pytest.approx(32 / 0.06)
    async_run = saved["runs"]["async"]
    assert async_run["staleness"]["max"] <= 2 and async_run["steps"] == 12
    assert async_run["compute_s_per_step"] >= 0.06  # every step padded to the model
    assert result["samples_per_s"]["async"] > 0 and saved["publish_ms"]["n"] >= 12
    assert sum(e["calls"] for e in async_run["explainers"].values()) == 12
