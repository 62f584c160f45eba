"""reldrop: Relevance-driven Input Dropout (Grüne et al. 2025, arXiv 2505.21595).

The algorithm layer (this folder's modules): pure torch + zennit, usable without Ray. The
distributed layers live in the repository's top-level folders ``pipeline/`` (Ray, shards,
streaming) and ``jobs/`` (command-line entry points); the links ``reldrop/pipeline`` and
``reldrop/jobs`` make them ``reldrop.pipeline`` and ``reldrop.jobs`` for every tool, and the
wheel holds them as real files.
"""


from importlib import import_module as _import_module
from pathlib import Path as _Path
from typing import TYPE_CHECKING
from typing import Any as _Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from reldrop.augment import AugmentStats, RelDrop
    from reldrop.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
    from reldrop.composites import COMPOSITES, make_composite
    from reldrop.models import MODELS, build_model
    from reldrop.normalization import Normalization
    from reldrop.occlusion import STRATEGIES, Occluder, OcclusionConfig, OcclusionResult
    from reldrop.optimizers import OPTIMIZERS, make_optimizer
    from reldrop.relevance import attribution, relevance

#: public name -> the module that defines it; imported on first use, so that ``import reldrop``
#: (and every ``reldrop <command> --help``) does not import torch and zennit
_WHERE = {
    "AugmentStats": "reldrop.augment",
    "RelDrop": "reldrop.augment",
    "ModelSpec": "reldrop.checkpoint",
    "load_checkpoint": "reldrop.checkpoint",
    "save_checkpoint": "reldrop.checkpoint",
    "COMPOSITES": "reldrop.composites",
    "make_composite": "reldrop.composites",
    "MODELS": "reldrop.models",
    "build_model": "reldrop.models",
    "Normalization": "reldrop.normalization",
    "STRATEGIES": "reldrop.occlusion",
    "Occluder": "reldrop.occlusion",
    "OcclusionConfig": "reldrop.occlusion",
    "OcclusionResult": "reldrop.occlusion",
    "OPTIMIZERS": "reldrop.optimizers",
    "make_optimizer": "reldrop.optimizers",
    "attribution": "reldrop.relevance",
    "relevance": "reldrop.relevance",
}

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
    "__version__",
    "attribution",
    "build_model",
    "load_checkpoint",
    "make_composite",
    "make_optimizer",
    "relevance",
    "save_checkpoint",
]


def __getattr__(name: str) -> _Any:
    if name == "__version__":  # one source: the installed distribution's metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("reldrop")
        except PackageNotFoundError:  # a source checkout on PYTHONPATH: its pyproject.toml
            import tomllib

            pyproject = _Path(__file__).resolve().parent.parent / "pyproject.toml"
            try:
                return str(tomllib.loads(pyproject.read_text())["project"]["version"])
            except (OSError, KeyError, tomllib.TOMLDecodeError):
                return "0+unknown"
    if name in _WHERE:
        return getattr(_import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'reldrop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
