"""reldrop: Relevance-driven Input Dropout (Grüne et al. 2025, arXiv 2505.21595).

The algorithm layer (this folder's modules): pure torch + zennit, usable without Ray. The
distributed layers install as ``reldrop.pipeline`` (Ray, shards, streaming) and
``reldrop.jobs`` (command-line entry points).
"""


from importlib import import_module as _import_module
from pathlib import Path as _Path
from typing import Any as _Any

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
    "attribution": "reldrop.relevance",
    "relevance": "reldrop.relevance",
}

__all__ = [
    "COMPOSITES",
    "MODELS",
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
    "relevance",
    "save_checkpoint",
]


def __getattr__(name: str) -> _Any:
    if name == "__version__":  # one source: the installed distribution's metadata
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("reldrop")
        except PackageNotFoundError:  # a source checkout on PYTHONPATH: its pyproject.toml
            import tomllib  # noqa: PLC0415

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


def _layer_folders() -> None:
    """In a source checkout (editable install, ``ray job submit --working-dir .``) the layers
    live in the top-level folders ``pipeline/`` and ``jobs/`` beside this package; an installed
    wheel places them inside it. Let ``reldrop.pipeline`` / ``reldrop.jobs`` find them."""
    here = _Path(__file__).resolve().parent
    root = here.parent
    if not (here / "pipeline").is_dir() and all(
        (root / layer / "__init__.py").is_file() for layer in ("pipeline", "jobs")
    ):
        __path__.append(str(root))


_layer_folders()
