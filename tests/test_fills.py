"""Fills, defined in the space the model sees."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from reldrop.fills import FILLS, POINT_FILLS, FillParams, apply_fill
from reldrop.normalization import Normalization
from reldrop.occlusion import Occluder


def _mask(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) < 0.4


def test_zero_is_the_dataset_mean_after_normalisation():
    norm = Normalization(mean=(0.1307, 0.5, 0.9), std=(0.3081, 0.2, 0.1))
    pixels = torch.randint(0, 256, (4, 3, 8, 8)).float()
    x = norm.to_model(pixels)
    dropped = _mask(4, 8, 8)
    out = apply_fill(x, dropped, "zero", FillParams())
    mean_pixel = torch.tensor(norm.mean).view(1, 3, 1, 1).expand(1, 3, 8, 8) * 255.0
    torch.testing.assert_close(norm.to_model(mean_pixel), torch.zeros(1, 3, 8, 8), atol=1e-6, rtol=0)
    assert (out.permute(0, 2, 3, 1)[dropped] == 0).all()
    assert torch.equal(out.permute(0, 2, 3, 1)[~dropped], x.permute(0, 2, 3, 1)[~dropped])


def test_constant_fill(images):
    dropped = _mask(8, 16, 16)
    out = apply_fill(images, dropped, "constant", FillParams(value=-1.25))
    assert (out[:, 0][dropped] == -1.25).all()
    assert torch.equal(out[:, 0][~dropped], images[:, 0][~dropped])


def test_noise_fill_statistics():
    x = torch.full((64, 2, 32, 32), 7.0)
    dropped = torch.ones(64, 32, 32, dtype=torch.bool)
    dropped[:, :, :16] = False
    out = apply_fill(x, dropped, "noise", FillParams(noise_std=0.5), torch.Generator().manual_seed(0))
    filled = out.permute(0, 2, 3, 1)[dropped]
    assert abs(filled.mean().item()) < 0.01 and abs(filled.std().item() - 0.5) < 0.01
    assert (out.permute(0, 2, 3, 1)[~dropped] == 7.0).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_fill_equals_gaussian_blur(images, sigma):
    dropped = _mask(8, 16, 16)
    out = apply_fill(images, dropped, "blur", FillParams(blur_sigma=sigma))
    kernel = 2 * round(3 * sigma) + 1
    blurred = gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    assert torch.equal(out[:, 0][dropped], blurred[:, 0][dropped])
    assert torch.equal(out[:, 0][~dropped], images[:, 0][~dropped])


def test_blur_fill_on_images_smaller_than_the_kernel():
    x = torch.randn(2, 1, 4, 4)
    out = apply_fill(x, torch.ones(2, 4, 4, dtype=torch.bool), "blur", FillParams(blur_sigma=2.0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.std() < x.std()


def test_point_duplicate_copies_kept_points(clouds):
    dropped = _mask(6, 32, seed=3)
    dropped[5] = False
    out = apply_fill(clouds, dropped, "duplicate", FillParams(), torch.Generator().manual_seed(1))
    for i in range(6):
        kept = clouds[i][~dropped[i]]
        assert torch.equal(out[i][~dropped[i]], kept)
        for point in out[i][dropped[i]]:
            assert (kept == point).all(dim=1).any()


def test_point_duplicate_everything_dropped_goes_to_origin(clouds):
    dropped = torch.zeros(6, 32, dtype=torch.bool)
    dropped[2] = True
    out = apply_fill(clouds, dropped, "duplicate", FillParams())
    assert (out[2] == 0).all() and torch.equal(out[3], clouds[3])


def test_point_zero_puts_points_at_origin(clouds):
    dropped = _mask(6, 32, seed=4)
    out = apply_fill(clouds, dropped, "zero", FillParams())
    assert (out[dropped] == 0).all() and torch.equal(out[~dropped], clouds[~dropped])


def test_fills_through_occluder(images, clouds):
    out = Occluder("random-pixel", p=1.0, fill="constant", fill_value=3.0)(images)
    assert (out.inputs[:, 0][out.dropped] == 3.0).all()
    out = Occluder("reldrop-points", fill="duplicate")(clouds, torch.randn(6, 32))
    assert out.dropped.any()
    for i in range(6):
        kept = clouds[i][~out.dropped[i]]
        for point in out.inputs[i][out.dropped[i]]:
            assert (kept == point).all(dim=1).any()


def test_unknown_fill_lists_known(images, clouds):
    with pytest.raises(ValueError, match=r"fill='mean' is unknown.*blur.*constant.*noise.*zero"):
        apply_fill(images, torch.zeros(8, 16, 16, dtype=torch.bool), "mean", FillParams())
    with pytest.raises(ValueError, match=r"fill='blur' is unknown.*duplicate"):
        apply_fill(clouds, torch.zeros(6, 32, dtype=torch.bool), "blur", FillParams())
    assert set(FILLS) == {"zero", "constant", "noise", "blur"}
    assert "duplicate" in POINT_FILLS and "blur" not in POINT_FILLS
