"""Run configuration: one frozen object, the single source of every ``reldrop train`` flag.

Each field carries its command-line metadata (help, choices, aliases, section) through
:func:`option`; ``reldrop.jobs.train`` generates its flags from the fields, so defaults live here
and nowhere else. The object is validated once on construction, travels to every Ray actor and
is written into ``report.json["config"]`` (flat, one key per field, as config files spell them).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.errors import ON_ERROR
from reldrop.pipeline.explanation.plan import StagePlan
from reldrop.pipeline.fields import FieldOption, option, registry_names
from reldrop.pipeline.simulated import SimulatedDevice

if TYPE_CHECKING:
    from reldrop.occlusion import OcclusionConfig

__all__ = [
    "DEFAULT_DATA_DIR",
    "MODES",
    "ON_ERROR",
    "ON_NONFINITE",
    "SECTIONS",
    "STALE_POLICIES",
    "FieldOption",
    "TrainConfig",
    "explainer_count",
    "option",
    "registry_names",
]

MODES = ("async", "sync", "precomputed")
STALE_POLICIES = ("pass", "drop", "re-explain")
ON_NONFINITE = ("stop", "skip")
DEFAULT_DATA_DIR = Path(os.environ.get("RELDROP_CACHE", Path.home() / ".cache" / "reldrop"))
#: help sections, in the order ``reldrop train --help`` shows them
SECTIONS = ("data", "method", "optimisation", "trainer", "explainer", "staleness", "run")


def _check_section(opt: FieldOption) -> FieldOption:
    if opt.section not in SECTIONS:
        raise ValueError(f"section={opt.section!r}; expected one of {SECTIONS}")
    return opt


def explainer_count(text: str) -> int | str:
    """``--explainers``: a positive integer, or ``auto`` (an autoscaling actor pool)."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} explainers; expected >= 1 or 'auto'")
    return value


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything needed to rerun a training job (``report.json["config"]``)."""

    # data
    train: str | None = option(None, "data", "train data: ROOT or ROOT#split (default split "
                               "train), or WebDataset shards (brace URL, glob, folder); default: "
                               "the demo DecoyMNIST")
    test: str | None = option(None, "data", "in-distribution test data (ROOT[#split], default "
                              "split test, or shard URLs)")
    ood_test: str | None = option(None, "data", "out-of-distribution test data (ROOT[#split], "
                                  "e.g. ROOT#test-ood, or shard URLs)", aliases=("ood-data",))
    image_key: str | None = option(None, "data", "image member(s) of each sample, e.g. jpg or "
                                   "'jpg;png' (default: the first of jpg, jpeg, png, webp, npy)")
    label_key: str | None = option(None, "data", "label member: cls, json or json:FIELD "
                                   "(default: cls, else json)")
    image_size: int | None = option(None, "data", "resize the shorter side to N and crop the "
                                    "centre N x N (default: keep the size)")
    num_classes: int | None = option(None, "data", "classes, for shards without a manifest "
                                     "(default: the manifest's, else the first shard's largest "
                                     "label + 1)")
    limit: int | None = option(None, "data", "use at most N training samples")
    on_error: str = option("raise", "data", "bad sample or shard: raise, or skip and count it",
                           choices=lambda: ON_ERROR)
    shuffle: bool = option(True, "data", "shuffle the training stream per epoch (seeded by --seed)")
    shuffle_buffer: int = option(1024, "data", "rows in the trainer's local shuffle buffer (0: off)")
    # method
    model: str = option("small-cnn", "method",
                        "model: a built-in name, package.module:factory, or torchvision:NAME")
    augment: str = option("reldrop-pixel", "method", "occlusion strategy",
                          aliases=("strategy",), registry=True,
                          choices=registry_names("reldrop.occlusion", "STRATEGIES"))
    mode: str = option("async", "method",
                       "async: explainer stage; sync: LRP in the training loop; precomputed",
                       choices=lambda: MODES)
    regularizer: str = option("none", "method", "trainer-side explanation-guided loss",
                              registry=True,
                              choices=registry_names("reldrop.regularizers", "REGULARIZERS"))
    reg_lambda: float | None = option(None, "method", "regularizer weight (default: its own)",
                                      flag="lambda", aliases=("reg-lambda",))
    composite: str = option("reference", "method", "LRP composite",
                            registry=True,
                            choices=registry_names("reldrop.composites", "COMPOSITES"))
    apply_prob: float | None = option(
        None, "method", "probability that a sample (or batch) is occluded (default: the "
        "strategy's own: 0.5, points 1.0)", flag="p", aliases=("apply-prob",))
    coin: str | None = option(None, "method", "occlusion coin per sample or per batch (default: "
                              "the strategy's own; block/patch flip one per batch as the "
                              "reference)", choices=lambda: ("sample", "batch"))
    fill: str | None = option(None, "method", "occlusion fill (default: the strategy's own)")
    gradmask_target: str = option(
        "contrast", "method", "GradMask: input gradient of the logit contrast y_t - logsumexp "
        "of the others (reference) or of the true-class logit",
        choices=lambda: ("contrast", "true-class"))
    gradmask_form: str = option("l1", "method", "GradMask penalty: l1 summed over the batch "
                                "(Viviano et al.) or the original squared, ramped form",
                                choices=lambda: ("l1", "original"))
    actdiff_layers: str = option(
        "penultimate", "method", "ActDiff: compare the penultimate features (the reference's "
        "final code) or the pre-activations of every layer (its earlier CNN)",
        choices=lambda: ("penultimate", "all"))
    isnet_classes: str = option("all", "method", "ISNet: penalise the heatmaps of all classes "
                                "(reference) or of the label only", choices=lambda: ("all", "label"))
    isnet_first_layer: str = option("zb", "method", "ISNet first-layer LRP rule",
                                    choices=lambda: ("zb", "epsilon"))
    isnet_b: float = option(3.0, "method", "ISNet foreground weight B (reference 3)",
                            flag="isnet-B")
    classify_masked_background: str = option(
        "black", "method", "classify-masked: background outside the mask (reference: black)",
        choices=lambda: ("black", "mean"))
    clip_grad_norm: float | None = option(
        None, "method", "gradient-norm clipping (default: the regularizer's own: isnet, gradmask, "
        "rrr 1.0; 0: off)")
    # optimisation
    optimizer: str = option("sgd", "optimisation", "sgd (momentum 0.9, weight decay 5e-4) or "
                            "adam (no weight decay)", registry=True,
                            choices=registry_names("reldrop.optimizers", "OPTIMIZERS"))
    lr: float = option(0.05, "optimisation", "learning rate of the optimizer")
    epochs: int = option(3, "optimisation", "training epochs")
    batch_size: int = option(64, "optimisation", "rows per trainer worker per step")
    seed: int = option(0, "optimisation", "seed of the model, occlusion draws and shuffling")
    on_nonfinite: str = option(
        "stop", "optimisation", "a non-finite loss or gradient: stop the run at that step with "
        "one line, or skip the step (no update; counted in the report)",
        choices=lambda: ON_NONFINITE)
    # trainer
    trainers: int = option(1, "trainer", "Ray Train workers (DDP)")
    trainer_cpus: float = option(1.0, "trainer", "CPUs per trainer worker")
    use_gpu: bool = option(False, "trainer", "train on GPUs")
    trainer_gpus: float | None = option(
        None, "trainer", "GPUs per trainer worker (default with --use-gpu: 1, or 0.5 when "
        "explainers must share the trainer's GPU)")
    max_failures: int = option(0, "trainer", "trainer worker failures to recover from by "
                               "restarting from the last epoch checkpoint")
    # explainer
    explainers: int | str | None = option(
        None, "explainer", "explainer actors (default: one per trainer), or 'auto' (as many as "
        "the free resources hold); a batch is cut into one chunk per explainer of its trainer",
        parse=explainer_count)
    explainers_max: int | None = option(None, "explainer", "upper bound of --explainers auto "
                                        "(default: what the cluster's free resources allow)")
    explainer_cpus: float | None = option(None, "explainer", "CPUs per explainer actor "
                                          "(default: what trainers and reads leave, shared)")
    explainer_gpus: float | None = option(
        None, "explainer", "GPUs per explainer actor (default: GPUs when training on GPU, "
        "sharing the trainer's on a one-GPU node; 0 on CPU)")
    explainer_batch_size: int | None = option(None, "explainer", "rows per explainer batch "
                                              "(default: --batch-size)")
    explainer_resource: str | None = option(
        None, "explainer", "custom Ray resource each explainer takes 1 unit of (e.g. 'explainer', "
        "advertised by an explainer worker group) so explainers land on those nodes")
    # staleness
    sync_every: int = option(1, "staleness", "publish weights every S trainer steps")
    max_staleness: int = option(
        2, "staleness", "bound on trainer_step - model_version: the trainer sends each batch to "
        "the explainers this many steps (less sync-every - 1) before it trains on it")
    explainer_wait_s: float = option(
        60.0, "staleness", "seconds a trainer waits for a batch's masks before it explains the "
        "rows itself (counted; the first batch waits up to 5 minutes for the explainers to start)")
    stale_policy: str = option("pass", "staleness", "rows staler than the bound: pass, drop, "
                               "re-explain", choices=lambda: STALE_POLICIES)
    precomputed: str | None = option(None, "staleness", "relevance column shards (mode precomputed)")
    # run
    address: str | None = option(None, "run", "Ray address to join (default: start local Ray)")
    num_cpus: int | None = option(None, "run", "logical CPUs of the local Ray cluster "
                                  "(default: all; ignored with --address)")
    num_gpus: int | None = option(None, "run", "GPUs of the local Ray cluster (default: all)")
    out: str = option("runs/train", "run", "output directory or URL")
    record_keys: bool = option(False, "run", "list every sample key each worker trained on per "
                               "epoch in the report")
    threads: int | None = option(None, "run", "torch threads per trainer", cli=False)
    simulate_step_ms: float | None = option(
        None, "run", "modelled accelerator: pad every trainer step to this many ms (the report "
        "says simulated)")
    simulate_lrp_ms: float | None = option(
        None, "run", "modelled accelerator: pad every LRP call to this many ms per --batch-size "
        "rows (scaled by the rows of the call)")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_numbers(self)
        if self.mode == "precomputed" and not self.precomputed:
            raise ValueError("mode='precomputed' needs --precomputed URL (written by `reldrop explain`)")
        self.occlusion()  # validates apply_prob, fill
        self.decode_options()  # validates the member keys and image size

    # ---- derived -------------------------------------------------------------------------
    def decode_options(self) -> DecodeOptions:
        """Which members hold image and label, and the image size (for every data URL)."""
        return DecodeOptions(image_key=self.image_key, label_key=self.label_key,
                             image_size=self.image_size)

    def occlusion(self) -> OcclusionConfig:
        from reldrop.occlusion import OcclusionConfig  # torch

        return OcclusionConfig(strategy=self.augment, p=self.apply_prob, coin=self.coin,
                               fill=self.fill)

    def regularizer_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`reldrop.regularizers.make_regularizer` beyond ``lam``."""
        per_method: dict[str, dict[str, Any]] = {
            "gradmask": {"target": self.gradmask_target, "form": self.gradmask_form},
            "actdiff": {"layers": self.actdiff_layers},
            "isnet": {"classes": self.isnet_classes, "first_layer": self.isnet_first_layer,
                      "B": self.isnet_b},
            "classify-masked": {"background": self.classify_masked_background},
        }
        params = dict(per_method.get(self.regularizer, {}))
        if self.clip_grad_norm is not None:
            params["clip_grad_norm"] = self.clip_grad_norm or None
        return params

    @property
    def needs_explainer(self) -> bool:
        """Whether the pipeline runs model-replica explainer actors (async RelDrop)."""
        from reldrop.occlusion import STRATEGIES  # torch

        return self.mode == "async" and STRATEGIES[self.augment].needs_relevance

    @property
    def has_stage(self) -> bool:
        """Whether rows pass through the explainer stage (async or precomputed occlusion)."""
        return self.augment != "none" and self.mode != "sync"

    @property
    def stage_batch_size(self) -> int:
        return self.explainer_batch_size or self.batch_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.trainers

    def stage_plan(self, run_id: str = "run") -> StagePlan:
        """The explainer stage's gate for this run (one place for the staleness arithmetic)."""
        return StagePlan(run_id=run_id, train_batch_size=self.global_batch,
                         sync_every=self.sync_every, max_staleness=self.max_staleness,
                         explainer_batch_size=self.stage_batch_size)

    @property
    def handoff_depth(self) -> int:
        """Steps ahead that a trainer sends batches to its explainers: the bound less the
        publish interval's own lag (:mod:`reldrop.pipeline.explanation.handoff`)."""
        return self.max_staleness - (self.sync_every - 1)

    def simulated_device(self) -> SimulatedDevice:
        return SimulatedDevice(step_ms=self.simulate_step_ms, lrp_ms=self.simulate_lrp_ms,
                               batch_size=self.batch_size)

    def max_ahead_samples(self) -> int:
        """Rows explained but not yet consumed that the gate admits (:attr:`StagePlan.max_ahead`)."""
        return self.stage_plan().max_ahead

    def staleness_bound(self) -> int:
        """The staleness (trainer steps) the hand-off guarantees: ``max_staleness``."""
        return self.max_staleness

    # ---- conversions ---------------------------------------------------------------------
    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_json`; unknown keys (a newer report) are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


for _field in fields(TrainConfig):  # every flag in a known help section
    if "option" in _field.metadata:
        _check_section(_field.metadata["option"])


def _check_choices(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        opt: FieldOption | None = f.metadata.get("option")
        if opt is None or opt.choices is None:
            continue
        allowed = list(opt.choices())
        value = getattr(cfg, f.name)
        if value not in allowed and not (value is None and f.default is None):
            raise ValueError(f"{f.name}={getattr(cfg, f.name)!r}; expected one of {allowed}")
    from reldrop.models import resolve_model

    resolve_model(cfg.model)  # a built-in, torchvision:NAME or package.module:factory


def _bad(cfg: TrainConfig, name: str, allowed: str) -> ValueError:
    return ValueError(f"{name}={getattr(cfg, name)!r}; expected {allowed}")


def _check_numbers(cfg: TrainConfig) -> None:
    """Counts, rates and resources: checked here, before Ray starts."""
    for name in ("epochs", "batch_size", "trainers", "sync_every"):
        if getattr(cfg, name) < 1:
            raise _bad(cfg, name, "an integer >= 1")
    if cfg.clip_grad_norm is not None and not (math.isfinite(cfg.clip_grad_norm)
                                               and cfg.clip_grad_norm >= 0):
        raise _bad(cfg, "clip_grad_norm", "a finite number >= 0 (0: off) or unset")
    for name in ("max_staleness", "max_failures", "shuffle_buffer"):
        if getattr(cfg, name) < 0:
            raise _bad(cfg, name, "an integer >= 0")
    for name in ("limit", "explainer_batch_size", "num_cpus", "explainers_max", "num_classes",
                 "image_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise _bad(cfg, name, "an integer >= 1 or unset")
    if cfg.num_gpus is not None and cfg.num_gpus < 0:
        raise _bad(cfg, "num_gpus", "an integer >= 0 or unset")
    if not (cfg.explainers in (None, "auto") or (isinstance(cfg.explainers, int)
                                                 and not isinstance(cfg.explainers, bool)
                                                 and cfg.explainers >= 1)):
        raise _bad(cfg, "explainers", "an integer >= 1, 'auto' or unset")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise _bad(cfg, "lr", "a positive finite number")
    positive = ("trainer_cpus", "explainer_cpus", "trainer_gpus")
    for name in positive + ("explainer_gpus",):
        value = getattr(cfg, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and name in positive):
            kind = "a positive" if name in positive else "a non-negative"
            raise _bad(cfg, name, f"{kind} finite number of {'CPUs' if 'cpus' in name else 'GPUs'}")
    if not (math.isfinite(cfg.explainer_wait_s) and cfg.explainer_wait_s > 0):
        raise _bad(cfg, "explainer_wait_s", "a positive finite number of seconds")
    for name in ("simulate_step_ms", "simulate_lrp_ms"):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise _bad(cfg, name, "a finite number of milliseconds >= 0, or unset")
    if cfg.needs_explainer and cfg.max_staleness == 0:
        raise ValueError("max_staleness=0 with mode='async' is in-loop explanation: use --mode "
                         "sync (or a bound >= 1)")
    if cfg.needs_explainer and cfg.handoff_depth < 1:
        raise ValueError(f"max_staleness={cfg.max_staleness} with sync_every={cfg.sync_every}: "
                         "publishing every S steps lags S - 1 steps by itself, so the bound must "
                         "be >= sync_every")
    if (cfg.needs_explainer and isinstance(cfg.explainers, int)
            and cfg.explainers < cfg.trainers):
        raise ValueError(f"explainers={cfg.explainers} for trainers={cfg.trainers}: every trainer "
                         "needs explainers of its own; use --explainers >= --trainers")
    if cfg.trainer_gpus and not cfg.use_gpu:
        raise ValueError(f"trainer_gpus={cfg.trainer_gpus!r} needs --use-gpu")
