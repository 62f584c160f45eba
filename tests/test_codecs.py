"""Sample schema: encode/decode round trips, every validation error, the pickle refusal."""

from __future__ import annotations

import io

import numpy as np
import pytest

from reldrop.pipeline.data.codecs import SampleError, encode_sample
from reldrop.pipeline.data.decode import decode_row, decode_sample

URL = "memory://ds/train-000000.tar"


def _decode(raw, **kw):
    kw.setdefault("num_classes", 10)
    return decode_sample(raw, url=URL, key="k1", **kw)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_image_round_trip(channels: int) -> None:
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, (channels, 6, 5), dtype=np.uint8)
    mask = (rng.random((6, 5)) > 0.5).astype(np.uint8)
    raw = encode_sample({"key": "k1", "image": image, "label": 7, "mask": mask})
    assert ("png" in raw) == (channels in (1, 3)) and "mask.png" in raw
    out = _decode(raw, expected_shape=(channels, 6, 5))
    assert out["key"] == "k1" and out["url"] == URL and out["label"] == 7
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)


def test_points_round_trip() -> None:
    points = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    raw = encode_sample({"key": "p", "points": points, "label": 2})
    assert set(raw) == {"__key__", "cls", "points.npy"}
    out = _decode(raw)
    np.testing.assert_array_equal(out["points"], points)
    assert "image" not in out and "mask" not in out


def test_plain_npy_float_is_points_and_cls_as_text() -> None:
    points = np.ones((4, 3), np.float32)
    out = _decode({"npy": _npy(points), "cls": "3"})
    assert out["label"] == 3 and out["points"].shape == (4, 3)


def test_ray_rows_raw_and_default_decoded() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    raw = encode_sample({"key": "k1", "image": image, "label": 1})
    # ray.data.read_webdataset(decoder=None): bytes plus __key__/__url__, absent columns None/NaN
    row = {"__key__": "k1", "__url__": URL, **{k: v for k, v in raw.items() if k != "__key__"}}
    out = decode_row({**row, "mask.png": None, "mask.npy": float("nan")}, num_classes=10)
    assert out["key"] == "k1" and out["url"] == URL and "mask" not in out
    np.testing.assert_array_equal(out["image"], image)
    # Ray's default decoder: cls int, png HW array
    decoded = {"__key__": "k1", "__url__": URL, "cls": 1, "png": image[0]}
    np.testing.assert_array_equal(decode_row(decoded, num_classes=2)["image"], image)


def _expect(raw, match: str, **kw) -> SampleError:
    with pytest.raises(SampleError, match=match) as info:
        _decode(raw, **kw)
    assert URL in str(info.value) and "'k1'" in str(info.value)
    return info.value


GOOD = encode_sample({"key": "k1", "image": np.zeros((1, 4, 4), np.uint8), "label": 1})


def test_missing_label() -> None:
    _expect({"png": GOOD["png"]}, "missing label")


def test_label_out_of_range_and_not_int() -> None:
    _expect({**GOOD, "cls": b"10"}, r"outside the classes \[0, 10\)")
    _expect({**GOOD, "cls": b"-1"}, "outside")
    _expect({**GOOD, "cls": b"cat"}, "not an integer")


def test_wrong_dtype_rank_shape() -> None:
    _expect({"cls": b"1", "npy": _npy(np.zeros((1, 4, 4), np.float32))}, "expected uint8")
    _expect({"cls": b"1", "npy": _npy(np.zeros((4, 4), np.uint8))}, r"\(C, H, W\)")
    _expect(GOOD, r"expected \(1, 8, 8\)", expected_shape=(1, 8, 8))
    _expect({"cls": b"1", "points.npy": _npy(np.zeros((4, 3), np.float64))}, "float32")
    bad_mask = {**GOOD, "mask.npy": _npy(np.zeros((3, 3), np.uint8))}
    _expect(bad_mask, "mask is uint8")


def test_corrupt_bytes_and_no_data() -> None:
    _expect({"cls": b"1", "png": b"\x89PNG not really"}, "cannot decode PNG")
    _expect({"cls": b"1", "npy": b"garbage"}, "cannot decode .npy")
    _expect({"cls": b"1"}, "no data entry")


def test_pickle_is_refused_never_loaded() -> None:
    import pickle

    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (pytest.fail, ("unpickled!",))

    payload = pickle.dumps(Boom())
    for ext in ("pkl", "pickle", "pyd", "pt", "pth", "state.pth"):
        _expect({**GOOD, ext: payload}, "pickle-type format; refused")
    # object arrays in .npy would need pickle: refused by allow_pickle=False
    _expect({"cls": b"1", "npy": _npy(np.array([Boom()], dtype=object))}, "cannot decode .npy")


def test_encode_validation() -> None:
    with pytest.raises(ValueError, match="must not contain '.'"):
        encode_sample({"key": "a.b", "image": np.zeros((1, 2, 2), np.uint8), "label": 0})
    with pytest.raises(ValueError, match="exactly one"):
        encode_sample({"key": "a", "label": 0})
    with pytest.raises(ValueError, match="uint8"):
        encode_sample({"key": "a", "image": np.zeros((1, 2, 2), np.float32), "label": 0})
    with pytest.raises(ValueError, match="label"):
        encode_sample({"key": "a", "image": np.zeros((1, 2, 2), np.uint8), "label": -1})
    with pytest.raises(ValueError, match="mask"):
        encode_sample(
            {"key": "a", "image": np.zeros((1, 2, 2), np.uint8), "label": 0,
             "mask": np.full((2, 2), 2, np.uint8)}
        )
