"""Keyed, paired randomness: every random draw for a sample a function of (seed, epoch, key).

With per-sample seeds, an occlusion (whether the sample is chosen, the pixel rule's uniforms,
a rectangle's size, aspect and centre, a random fill) depends on the sample alone: the same
whatever batch it lands in, in whatever order, and whichever process (trainer, explainer actor,
``reldrop explain``) draws it. Two runs with the same seed then see the same draws, and an
async run differs from a sync one only by the relevance it was given.

The hash is BLAKE2b (stable across processes and Python versions, unlike ``hash()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["PURPOSES", "sample_seed", "sample_seeds", "sub_generator"]

#: the independent streams drawn from one sample seed
PURPOSES: dict[str, int] = {"coin": 0, "mask": 1, "fill": 2}
_MASK63 = (1 << 63) - 1


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _MASK63


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """The 63-bit seed of sample ``key`` in ``epoch`` of a run seeded with ``seed``."""
    return _digest("reldrop-sample", int(seed), int(epoch), str(key))


def sample_seeds(seed: int, epoch: int, keys: Sequence[str]) -> torch.Tensor:
    """:func:`sample_seed` for every key, as an int64 tensor (what occluders take as ``seeds``)."""
    return torch.tensor([sample_seed(seed, epoch, k) for k in keys], dtype=torch.int64)


def sub_generator(sample: int, purpose: str) -> torch.Generator:
    """A CPU generator for one ``purpose`` (see :data:`PURPOSES`) of one sample seed; streams
    of different purposes are independent, so separate calls (choose, mask, fill) never reuse
    each other's numbers."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}; expected one of {sorted(PURPOSES)}")
    return torch.Generator().manual_seed(_digest("reldrop-stream", int(sample), PURPOSES[purpose]))
