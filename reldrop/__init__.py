"""reldrop: Relevance-driven Input Dropout (Grüne et al. 2025, arXiv 2505.21595).

The algorithm layer (this folder's modules): pure torch + zennit, usable without Ray. The
distributed layers live in the repository's top-level folders ``pipeline/`` (Ray, shards,
streaming) and ``jobs/`` (command-line entry points); the links ``reldrop/pipeline`` and
``reldrop/jobs`` make them ``reldrop.pipeline`` and ``reldrop.jobs`` for every tool, and the
wheel holds them as real files.
"""

from reldrop.augment import AugmentStats, RelDrop
from reldrop.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from reldrop.composites import COMPOSITES, make_composite
from reldrop.models import MODELS, build_model
from reldrop.normalization import Normalization
from reldrop.occlusion import STRATEGIES, Occluder, OcclusionConfig, OcclusionResult
from reldrop.optimizers import OPTIMIZERS, make_optimizer
from reldrop.relevance import attribution, relevance

__all__ = [
    "COMPOSITES",
    "MODELS",
    "OPTIMIZERS",
    "STRATEGIES",
    "AugmentStats",
    "ModelSpec",
    "Normalization",
    "OcclusionConfig",
    "OcclusionResult",
    "Occluder",
    "RelDrop",
    "attribution",
    "build_model",
    "load_checkpoint",
    "make_composite",
    "make_optimizer",
    "relevance",
    "save_checkpoint",
]

