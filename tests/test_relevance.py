"""relevance(): equals a direct zennit call; leaves the model exactly as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat, SpecialFirstLayerMapComposite
from zennit.layer import Sum
from zennit.rules import Epsilon, Flat, Norm, Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution, Linear

from reldrop.relevance import attribution, check_inputs, eval_mode, relevance

CASES = [
    # name, input shape (without batch), classes, canonizer factory, channel dim
    ("small-cnn", (1, 12, 12), 3, lambda: [SequentialMergeBatchNorm()], 1),
    ("resnet18", (3, 8, 8), 4, lambda: [ResNetCanonizer()], 1),
    ("pointnet", (24, 3), 5, lambda: [SequentialMergeBatchNorm()], 2),
]


def _literal_reference(canonizers: list, sum_norm: bool = False) -> SpecialFirstLayerMapComposite:
    """The RelDrop reference code's composite, written out: Epsilon(1e-3) conv/linear, Flat
    first layer, Norm on average pools, Pass activations/BatchNorm, no rule on residual sums
    (``sum_norm``: Norm there, the ``reference-sum-norm`` composite)."""
    return SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (BatchNorm, Pass()),
            *([(Sum, Norm())] if sum_norm else []),
            (AvgPool, Norm()),
            (Convolution, Epsilon(epsilon=1e-3)),
            (nn.Linear, Epsilon(epsilon=1e-3)),
        ],
        first_map=[(Linear, Flat())],
        canonizers=canonizers,
    )


def _direct(model: nn.Module, x: torch.Tensor, index: torch.Tensor, composite, dim: int):
    """Relevance by hand: eval mode, zennit Gradient, one-hot seed, sum over channels."""
    training = model.training
    model.eval()
    try:
        with Gradient(model=model, composite=composite) as attributor:
            _, attr = attributor(
                x.clone().requires_grad_(True),
                lambda out: torch.eye(out.shape[1])[index].to(out.dtype),
            )
    finally:
        model.train(training)
    return attr.detach().sum(dim=dim)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise_equal(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), f"{key} changed"


@pytest.mark.parametrize("name,shape,classes,canonizers,dim", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "reference", "reference-sum-norm"])
def test_relevance_equals_direct_zennit_call(make_model, name, shape, classes, canonizers, dim, composite):
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 1])
    model = make_model(name, shape[0] if dim == 1 else shape[1], classes, x)
    if composite.startswith("reference"):
        expected_comp = _literal_reference(canonizers(), sum_norm=composite == "reference-sum-norm")
    else:
        expected_comp = EpsilonPlusFlat(canonizers=canonizers())
    expected = _direct(model, x, y, expected_comp, dim)
    got = relevance(model, x, y, composite=composite)
    assert got.shape == (4, *(shape[1:] if dim == 1 else shape[:1]))
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_predicted_target_uses_argmax(make_model, images):
    model = make_model("small-cnn", 1, 3, images)
    x = images[:4]
    with eval_mode(model), torch.no_grad():
        predicted = model(x).argmax(dim=1)
    wrong = (predicted + 1) % 3
    by_prediction = relevance(model, x, wrong, target="predicted")
    torch.testing.assert_close(by_prediction, relevance(model, x, predicted))
    assert not torch.allclose(by_prediction, relevance(model, x, wrong))
    assert torch.equal(relevance(model, x, None, target="predicted"), by_prediction)


def test_attribution_returns_eval_mode_logits(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images)
    attr, logits = attribution(model, images, labels)
    assert attr.shape == images.shape and not attr.requires_grad
    with eval_mode(model), torch.no_grad():
        torch.testing.assert_close(logits, model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,shape,classes", [c[:3] for c in CASES], ids=[c[0] for c in CASES])
def test_model_state_untouched_mode_restored(make_model, name, shape, classes):
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(3))
    model = make_model(name, shape[0] if name != "pointnet" else 3, classes, x)
    # a mixed-mode model: some submodules deliberately in eval mode
    for i, module in enumerate(model.modules()):
        if i % 3 == 1:
            module.eval()
    modes = [m.training for m in model.modules()]
    assert any(modes) and not all(modes)
    before = _snapshot(model)
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with torch.no_grad():
        rel = relevance(model, x, torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(rel).all()
    _assert_bitwise_equal(model, before)
    assert [m.training for m in model.modules()] == modes
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks_before
    assert all(p.grad is None for p in model.parameters())


def test_relevance_is_independent_of_mode_and_grad_mode(make_model, images, labels):
    """LRP always runs in eval mode: a train-mode model gives the eval-mode relevance."""
    model = make_model("small-cnn", 1, 3, images)
    in_train = relevance(model, images, labels)
    model.eval()
    with torch.no_grad():
        in_eval = relevance(model, images, labels)
    assert torch.equal(in_train, in_eval)


def test_state_restored_after_error_inside_attribution(make_model, images):
    model = make_model("small-cnn", 1, 3, images)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="targets must lie in"):
        relevance(model, images, torch.full((8,), 3))
    _assert_bitwise_equal(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_bounds_reach_box_rule(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images)
    rel = relevance(model, images, labels, composite="epsilon_gamma_box")
    assert rel.shape == (8, 16, 16) and torch.isfinite(rel).all()
    other = relevance(model, images, labels, composite="epsilon_gamma_box", bounds=(-10.0, 10.0))
    assert not torch.allclose(rel, other)


def test_create_graph_keeps_graph(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images).eval()
    attr, _ = attribution(model, images, labels, create_graph=True)
    assert attr.requires_grad
    attr.abs().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---- bad input -------------------------------------------------------------------------------


def test_check_inputs_kinds():
    assert check_inputs(torch.zeros(1, 1, 2, 2)) == "image"
    assert check_inputs(torch.zeros(1, 4, 3)) == "points"


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (torch.zeros(4, 16), ValueError, r"inputs has shape \(4, 16\).*rank 4.*rank 3"),
        (torch.zeros(1, 1, 1, 8, 8), ValueError, "inputs has shape"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), TypeError, "inputs must be a floating-point"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), TypeError, "floating-point.*int64"),
        ([[0.0]], TypeError, "inputs must be a torch.Tensor"),
    ],
)
def test_bad_inputs(make_model, images, inputs, error, match):
    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises(error, match=match):
        relevance(model, inputs, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "targets,error,match",
    [
        (torch.full((8,), 3), ValueError, r"targets must lie in \[0, 3\).*\[3, 3\]"),
        (torch.full((8,), -1), ValueError, r"targets must lie in \[0, 3\)"),
        (torch.zeros(7, dtype=torch.long), ValueError, r"targets has shape \(7,\); expected \(8,\)"),
        (torch.zeros(8, 1, dtype=torch.long), ValueError, "targets has shape"),
        (torch.zeros(8), TypeError, "targets must be integer"),
        (None, ValueError, "targets is required"),
    ],
)
def test_bad_targets(make_model, images, targets, error, match):
    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises(error, match=match):
        relevance(model, images, targets)


def test_unknown_composite_and_target(make_model, images, labels):
    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises(ValueError, match=r"composite='lrp'.*epsilon_gamma_box.*reference"):
        relevance(model, images, labels, composite="lrp")
    with pytest.raises(ValueError, match=r"target='true'.*label.*predicted"):
        relevance(model, images, labels, target="true")  # type: ignore[arg-type]


def test_unknown_lrp_option_is_named(make_model, images, labels) -> None:
    from reldrop.relevance import relevance

    model = make_model("small-cnn", 1, 3, images)
    with pytest.raises(TypeError, match=r"unknown LRP option\(s\) \['composit'\]; known: "):
        relevance(model, images, labels, composit="reference")  # type: ignore[call-arg]
