"""Decode rate of the shard reader by image format: rows per CPU-second of ``decode_block``.

The same images, encoded as ``jpg`` (quality 90), ``png`` and ``npy`` (what ``make-shards``
writes), go through :func:`reldrop.pipeline.data.read.decode_block` in blocks of 64; the CPU
time of this process (``time.process_time``, all threads) is measured, so other load on the
machine does not count. ``png (PIL, per sample)`` is the per-sample Pillow decoding the reader
used before batched ``torchvision.io`` decoding, for reference.

    python benchmarks/decode_rate.py [--rows 512] [--sides 32,224]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from reldrop.pipeline.data.read import RowSchema, decode_block


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, image.transpose(2, 0, 1), allow_pickle=False)
    else:
        Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _images(rows: int, side: int) -> list[np.ndarray]:
    """Smooth images with texture (compress like photos, unlike pure noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(rows):
        f = rng.uniform(1, 6, 3)
        base = np.stack([np.sin(f[c] * (xx + yy * c) * 3.14) for c in range(3)], -1)
        noise = rng.normal(0, 0.08, (side, side, 3))
        out.append(np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8))
    return out


def rate(samples: list[tuple[str, dict]], schema: RowSchema, block: int = 64) -> float:
    start = time.process_time()
    for i in range(0, len(samples), block):
        decode_block(samples[i:i + block], "bench", schema)
    return len(samples) / (time.process_time() - start)


def pil_rate(samples: list[tuple[str, dict]]) -> float:
    start = time.process_time()
    for _, entries in samples:
        with Image.open(io.BytesIO(bytes(entries["png"]))) as img:
            np.asarray(img).transpose(2, 0, 1)
        int(bytes(entries["cls"]))
    return len(samples) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--sides", default="32,224")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; rows per CPU-second (higher is better)")
    print("| side | format | bytes/row | rows per CPU-s |\n|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        images = _images(args.rows, side)
        schema = RowSchema(num_classes=10, input_shape=(3, side, side), dtype="uint8",
                           modality="image", has_mask=False)
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("npy", "npy")):
            samples = [(f"k{i}", {ext: _encode(im, fmt), "cls": b"1"}) for i, im in enumerate(images)]
            rate(samples[:64], schema)  # warm up (imports, allocator)
            size = np.mean([len(s[1][ext]) for s in samples])
            print(f"| {side} | {ext} | {size:.0f} | {rate(samples, schema):.0f} |")
            if ext == "png":
                print(f"| {side} | png (PIL, per sample) | {size:.0f} | {pil_rate(samples):.0f} |")


if __name__ == "__main__":
    main()
