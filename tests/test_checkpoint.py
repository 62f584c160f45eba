"""Checkpoints: safetensors round trip; numpy state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reldrop.checkpoint import (
    ModelSpec,
    load_checkpoint,
    load_numpy_state,
    save_checkpoint,
    state_to_numpy,
)
from reldrop.models import build_model
from reldrop.normalization import Normalization


@pytest.mark.parametrize("name,channels", [("small-cnn", 1), ("resnet18", 3), ("pointnet", 3)])
def test_safetensors_round_trip(tmp_path, make_model, name, channels):
    x = torch.randn(4, 20, 3) if name == "pointnet" else torch.randn(4, channels, 8, 8)
    model = make_model(name, channels, 4, x)
    spec = ModelSpec(
        name=name, in_channels=channels, num_classes=4,
        normalization=Normalization(mean=(0.1, 0.2, 0.3)[:channels], std=(0.5, 0.6, 0.7)[:channels]),
    )
    path = save_checkpoint(tmp_path / "sub" / "model.safetensors", model, spec, extra={"step": 12})
    assert path.is_file() and path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    loaded, loaded_spec, extra = load_checkpoint(path)
    assert loaded_spec == spec and extra == {"step": 12} and type(loaded) is type(model)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    assert loaded.state_dict().keys() == original.keys()
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_spec_json_round_trip():
    spec = ModelSpec(name="small-cnn", in_channels=1, num_classes=10)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert isinstance(spec.build(), torch.nn.Module)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no reldrop model spec"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_numpy_state_round_trip(make_model):
    x = torch.randn(4, 1, 8, 8)
    model = make_model("small-cnn", 1, 3, x)
    state = state_to_numpy(model)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fresh = build_model("small-cnn", in_channels=1, num_classes=3)
    load_numpy_state(fresh, state)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    state[next(iter(state))][...] = 123.0  # the loaded model does not alias the arrays
    assert not (next(iter(fresh.state_dict().values())) == 123.0).any()
