"""Checks that run before any Ray cluster starts: does the model fit the data?

A checkpoint trained on 3-channel images, an evaluation set with other classes, a user
factory that returns ``nn.Identity`` or takes other arguments: each used to surface deep inside
a Ray task (or a 50-line ``RuntimeError``) after the cluster had started. Here each is one
``ValueError`` naming the model, the data and the fix, raised by the driver and the jobs
before anything expensive happens. Shapes come from the manifest; the model's output is
checked with one forward pass on two all-zero inputs (milliseconds on a CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reldrop.checkpoint import ModelSpec
from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.manifest import Manifest

__all__ = ["check_data_agrees", "check_model_output", "check_spec_fits", "check_training_run"]


def _channels(manifest: Manifest) -> int:
    """Input channels of ``manifest``'s samples (images C x H x W, point clouds P x C)."""
    shape = manifest.input_shape
    return int(shape[-1] if manifest.modality == "points" else shape[0])


def check_spec_fits(spec: ModelSpec, manifest: Manifest, *, where: str) -> None:
    """``spec`` (from a checkpoint or the run) takes ``manifest``'s samples and classes."""
    data = f"data {manifest.root_url!r} ({manifest.modality} {tuple(manifest.input_shape)}, " \
           f"{manifest.num_classes} classes)"
    channels = _channels(manifest)
    if spec.in_channels != channels:
        raise ValueError(
            f"{where}: model {spec.name!r} takes {spec.in_channels} input channel(s), {data} has "
            f"{channels}; use a model trained on this kind of data"
        )
    if spec.num_classes != manifest.num_classes:
        raise ValueError(
            f"{where}: model {spec.name!r} has {spec.num_classes} classes, {data} has "
            f"{manifest.num_classes}; use a model trained on these classes"
        )


def check_model_output(
    model: nn.Module, spec: ModelSpec, input_shape: tuple[int, ...], *, where: str
) -> None:
    """One forward pass of ``model`` (CPU, eval mode, no grad; its mode is restored) on two
    zero samples of ``input_shape``: it must return N x ``spec.num_classes`` logits."""
    x = torch.zeros((2, *input_shape))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out: Any = model(x.to(device))
    except Exception as err:  # noqa: BLE001 - a user's model may raise anything
        problem = " ".join(str(err).split())[:160]
        raise ValueError(
            f"{where}: model {spec.name!r} fails on inputs of shape {tuple(x.shape)} "
            f"({type(err).__name__}: {problem}); check the model or the data"
        ) from err
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, spec.num_classes):
        raise ValueError(
            f"{where}: model {spec.name!r} returns {shape} for inputs of shape {tuple(x.shape)}; "
            f"expected N x {spec.num_classes} logits (a classifier's output)"
        )


def check_data_agrees(first: Manifest, other: Manifest, *, where: str) -> None:
    """Two data sets of one run (train and test) hold samples of one shape and class count."""
    if (first.modality, tuple(first.input_shape), first.num_classes) != (
        other.modality, tuple(other.input_shape), other.num_classes
    ):
        raise ValueError(
            f"{where}: {other.root_url!r} holds {other.modality} {tuple(other.input_shape)} with "
            f"{other.num_classes} classes, {first.root_url!r} {first.modality} "
            f"{tuple(first.input_shape)} with {first.num_classes}; use data of one kind"
        )


def check_training_run(spec: ModelSpec, manifest: Manifest, others: list[str | None],
                       decode: DecodeOptions | None = None) -> None:
    """Before a training cluster starts: the model builds (a user factory is called once), takes
    the training data and returns logits; the evaluation sets ``others`` (data URLs, with a
    manifest or plain WebDataset shards decoded with ``decode``) hold data of the same kind."""
    from reldrop.pipeline.data.manifest import has_manifest
    from reldrop.pipeline.data.plan import parse_data_url, plan_split

    where = f"--model {spec.name!r}"
    check_spec_fits(spec, manifest, where=where)
    check_model_output(spec.build(), spec, manifest.input_shape, where=where)
    for url in others:
        if url:
            # without a manifest the shards cannot say the class count: the training data's
            classes = None if has_manifest(parse_data_url(url, "test")[0]) else manifest.num_classes
            other = plan_split(url, "test", on_error="skip", decode=decode,
                               num_classes=classes).manifest
            check_data_agrees(manifest, other, where=f"--test/--ood-test {url!r}")
