"""Standard WebDataset shards (written by plain ``webdataset.TarWriter``, no manifest): jpg/png
images with cls/json labels read by brace URL, folder or glob; bad input named in one line;
``read_shards`` and ``reldrop train`` on them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from reldrop.jobs.cli import main as cli
from reldrop.pipeline.data.codecs import SampleError
from reldrop.pipeline.data.decode import DecodeOptions
from reldrop.pipeline.data.errors import ShardError, SkipReport
from reldrop.pipeline.data.plan import expand_urls, plan_split
from reldrop.pipeline.data.read import iter_samples

SIDE = 16


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    """RGB noise with a bright square in the quadrant named by ``label`` (H x W x 3)."""
    image = rng.integers(0, 60, (SIDE, SIDE, 3), dtype=np.uint8)
    r, c = 8 * (label // 2), 8 * (label % 2)
    image[r:r + 8, c:c + 8] = 230
    return image


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=95) if fmt == "JPEG" else \
        Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def write_jpg_shards(folder: Path, *, shards: int = 2, per_shard: int = 12, prefix: str = "train",
                     fmt: str = "JPEG", ext: str = "jpg", label: str = "cls",
                     bad: dict[int, dict] | None = None, start: int = 0) -> list[int]:
    """``{prefix}-{i:06d}.tar`` with ``ext`` images and ``label`` labels, as other tools write
    them (plain TarWriter, its default encoder); returns the labels in order."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    n = start
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:06d}.tar")) as sink:
            for _ in range(per_shard):
                y = n % 4
                sample = {"__key__": f"sample{n:05d}", ext: _encoded(_image(y, rng), fmt)}
                sample[label] = y if label == "cls" else {"label": y, "name": f"q{y}"}
                sample.update((bad or {}).get(n, {}))
                sample = {k: v for k, v in sample.items() if v is not None}
                sink.write(sample)
                labels.append(y)
                n += 1
    return labels


@pytest.fixture(scope="module")
def jpg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds")
    write_jpg_shards(root)
    return root


def test_brace_folder_and_glob_urls_name_the_same_shards(jpg_root: Path) -> None:
    brace = f"{jpg_root}/train-{{000000..000001}}.tar"
    want = [f"{jpg_root}/train-000000.tar", f"{jpg_root}/train-000001.tar"]
    assert expand_urls(brace) == want
    assert expand_urls(str(jpg_root), "train") == want
    assert expand_urls(f"{jpg_root}/*.tar") == want
    assert expand_urls(f"{want[0]}::{want[1]}") == want


def test_jpg_cls_read_decoded_in_batches(jpg_root: Path, caplog) -> None:
    caplog.set_level("WARNING")
    plan = plan_split(f"{jpg_root}/train-{{000000..000001}}.tar", "train", on_error="raise")
    assert not plan.verified and plan.manifest.input_shape == (3, SIDE, SIDE)
    assert plan.manifest.num_classes == 4 and plan.num_samples == 24
    assert any("without sha256" in r.message for r in caplog.records)  # says what is not checked
    samples = list(iter_samples(plan))
    assert [s["key"] for s in samples] == [f"sample{i:05d}" for i in range(24)]
    assert [s["label"] for s in samples] == [i % 4 for i in range(24)]
    image = samples[5]["image"]  # label 1: the top-right quadrant is bright (JPEG is lossy)
    assert image.dtype == np.uint8 and image[:, 1:7, 9:15].mean() > 200 > 100 > image[:, 9:15, 1:7].mean()


def test_png_json_labels_resize_and_gray(tmp_path: Path) -> None:
    write_jpg_shards(tmp_path, shards=1, per_shard=6, fmt="PNG", ext="png", label="json")
    url = str(tmp_path / "train-000000.tar")
    got = list(iter_samples(url, decode=DecodeOptions(image_size=8)))
    assert got[0]["image"].shape == (3, 8, 8) and [s["label"] for s in got] == [0, 1, 2, 3, 0, 1]
    named = DecodeOptions(image_key="webp;png", label_key="json:label", image_size=4)
    assert list(iter_samples(url, decode=named))[3]["image"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match="label_key 'txt'"):
        DecodeOptions(label_key="txt")
    with pytest.raises(ValueError, match="image_key 'cls'"):
        DecodeOptions(image_key="cls")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"jpg": None, "txt": b"no image"}, r"no data entry \(image\)"),
        ({"cls": b"cat"}, "is not an integer"),
        ({"jpg": b"\xff\xd8 not a jpeg"}, "cannot decode JPG"),
    ],
)
def test_bad_samples_name_url_and_key_or_are_counted(tmp_path: Path, bad: dict, message: str
                                                     ) -> None:
    write_jpg_shards(tmp_path, shards=1, per_shard=6, bad={3: bad})
    url = str(tmp_path / "train-000000.tar")
    with pytest.raises(SampleError, match=message) as err:
        list(iter_samples(url))
    assert url in str(err.value) and "sample00003" in str(err.value)
    report = SkipReport()
    assert len(list(iter_samples(url, on_error="skip", report=report))) == 5
    assert report.samples == 1 and report.items[0].key == "sample00003"


def test_empty_brace_and_missing_shards(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="names no shards"):
        plan_split(f"{tmp_path}/*.tar", "train", on_error="raise")
    write_jpg_shards(tmp_path, shards=1, per_shard=4)
    brace = f"{tmp_path}/train-{{000000..000002}}.tar"
    with pytest.raises(ShardError, match="train-000001.tar"):
        plan_split(brace, "train", on_error="raise")
    plan = plan_split(brace, "train", on_error="skip")
    assert len(plan.urls) == 1 and len(plan.skipped_shards) == 2
    # through the CLI: one line naming the URL, exit 2, before Ray starts
    none = f"{tmp_path}/nothing-{{000..009}}.tar"
    assert cli(["train", "--train", none, "--augment", "none"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("reldrop train: ") and none in lines[0]


@pytest.mark.ray
@pytest.mark.slow
def test_read_shards_and_train_on_jpg_cls(ray_local, jpg_root: Path, tmp_path: Path) -> None:
    from reldrop.pipeline import read_shards

    brace = f"{jpg_root}/train-{{000000..000001}}.tar"
    ds = read_shards(brace, image_size=12)
    context_before = ds.context.target_max_block_size
    rows = ds.take_all()
    assert len(rows) == 24 and rows[0]["image"].shape == (3, 12, 12)
    assert sorted(int(r["label"]) for r in rows) == sorted(i % 4 for i in range(24))
    assert not any(r["skipped"] for r in rows) and ds.context.target_max_block_size == context_before
    # one more shard with a non-integer label: --on-error skip trains on the rest and counts it
    write_jpg_shards(tmp_path / "more", shards=1, per_shard=4, start=100, bad={102: {"cls": b"cat"}})
    out = tmp_path / "run"
    code = cli(["train", "--train", f"{brace}::{tmp_path}/more/train-000000.tar",
                "--test", f"{jpg_root}/train-000001.tar", "--augment", "none", "--epochs", "1",
                "--batch-size", "8", "--num-classes", "4", "--on-error", "skip",
                "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["skipped"] == 1 and report["counts"]["seen"] in (27, 28)
    assert report["epochs"][0]["test_accuracy"] is not None


def test_split_names_of_both_namings() -> None:
    """``test-id``/``test-ood`` name the same data in new datasets (test, test-ood) and in
    datasets written before (test-id, test); a name a dataset has always means its own split."""
    from reldrop.pipeline.data.plan import resolve_split

    old, new = ("train", "test-id", "test"), ("train", "test", "test-ood")
    assert resolve_split("test-ood", old, "r") == "test" and resolve_split("test-id", old, "r") == "test-id"
    assert resolve_split("test-ood", new, "r") == "test-ood" and resolve_split("test-id", new, "r") == "test"
    assert resolve_split("test", old, "r") == "test" and resolve_split("test", new, "r") == "test"
    with pytest.raises(ValueError, match="split 'test-ood' not in 'r'"):
        resolve_split("test-ood", ("train", "test"), "r")


def test_evaluate_reads_jpg_shards_without_a_manifest(jpg_root: Path, tmp_path: Path) -> None:
    """``reldrop evaluate`` reads the same standard shards through the same reader (in process)."""
    from reldrop.checkpoint import ModelSpec, save_checkpoint
    from reldrop.normalization import Normalization

    spec = ModelSpec(name="small-cnn", in_channels=3, num_classes=4,
                     normalization=Normalization(mean=(0.3,) * 3, std=(0.3,) * 3))
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", spec.build(), spec, {})
    out = tmp_path / "eval"
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), "--no-plots",
                "--data", f"{jpg_root}/train-000000.tar", "--image-size", "12",
                "--ood-test", f"{jpg_root}/train-000001.tar", "--batch-size", "6",
                "--limit", "6"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert [report["datasets"][k]["n"] for k in ("in_distribution", "out_of_distribution")] == [6, 6]


def test_folder_split_is_strict_when_named(tmp_path: Path) -> None:
    write_jpg_shards(tmp_path, shards=1, per_shard=2, prefix="train")
    assert expand_urls(str(tmp_path), "test") == [f"{tmp_path}/train-000000.tar"]  # the default
    with pytest.raises(ValueError, match="names no shards"):
        plan_split(f"{tmp_path}#test", "train", on_error="raise")  # asked for: none there
