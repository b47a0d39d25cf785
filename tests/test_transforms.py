"""Paper preprocessing: downsample, training augmentation, centre and 13-crop test views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchvision.transforms.v2 import functional as TF

from capsrobust.data import transforms as T


def test_downsample_maps_uint8_to_unit_range_at_48_pixels() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 2, 96, 96), dtype=np.uint8)
    out = T.downsample(images, chunk=2)
    assert out.shape == (5, 2, 48, 48) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_downsample_averages_rather_than_subsamples() -> None:
    # A one-pixel checkerboard averages to grey under an antialiased resize; plain subsampling would not.
    board = (np.indices((96, 96)).sum(0) % 2 * 255).astype(np.uint8)[None, None]
    out = T.downsample(board)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)


def test_train_transform_crops_to_32_and_stays_in_unit_range() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 48, 48)
    augment = T.train_transform()
    outs = [augment(image) for _ in range(20)]
    assert all(o.shape == (2, 32, 32) and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:]), "augmentation should be random"


def test_train_transform_jitters_both_cameras_alike() -> None:
    torch.manual_seed(1)
    camera = torch.rand(1, 48, 48)
    out = T.train_transform()(torch.cat([camera, camera]))
    torch.testing.assert_close(out[0], out[1])


def test_brightness_shift_is_additive_and_bounded() -> None:
    shift = T.RandomBrightnessShift(max_delta=0.25)
    image = torch.full((1, 8, 8), 0.5)
    for _ in range(50):
        out = shift(image)
        delta = (out - image).unique()
        assert len(delta) == 1 and abs(float(delta)) <= 0.25 + 1e-6


def test_contrast_range_matches_the_paper() -> None:
    torch.manual_seed(2)
    image = torch.linspace(0.3, 0.7, 48 * 48).reshape(1, 48, 48)
    ratios = []
    augment = T.train_transform(max_brightness_delta=0.0)
    for _ in range(200):
        out = augment(image)
        ratios.append(float(out.std() / T.center_crop(image[None])[0].std()))
    assert 0.15 < min(ratios) < 0.45 and 1.5 < max(ratios) < 1.9


def test_center_crop_takes_the_middle() -> None:
    images = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48)
    crop = T.center_crop(images)
    assert crop.shape == (1, 1, 32, 32)
    assert crop[0, 0, 0, 0] == images[0, 0, 8, 8]


def test_multi_crop_gives_the_centre_and_twelve_diagonal_shifts() -> None:
    images = torch.rand(3, 2, 48, 48)
    crops = T.multi_crop(images)
    assert crops.shape == (13, 3, 2, 32, 32)
    torch.testing.assert_close(crops[0], T.center_crop(images))
    assert len(set(T.MULTI_CROP_OFFSETS)) == 13
    assert {abs(dy) for dy, dx in T.MULTI_CROP_OFFSETS[1:]} == {1, 2, 3}
    assert all(abs(dy) == abs(dx) for dy, dx in T.MULTI_CROP_OFFSETS)
    k = T.MULTI_CROP_OFFSETS.index((-3, 2 * 0 + 3))
    torch.testing.assert_close(crops[k], images[..., 5:37, 11:43])


def test_batched_augmentation_matches_torchvision_per_example() -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(6, 2, 48, 48, generator=g)
    params = T.sample_augment_params(6, generator=g)
    batch = T.augment_batch(images, params)
    for i in range(6):
        crop = TF.crop(images[i], int(params.top[i]), int(params.left[i]), 32, 32)
        shifted = (crop + float(params.brightness[i])).clamp(0, 1)
        expected = TF.adjust_contrast(shifted.unsqueeze(1), float(params.contrast[i])).squeeze(1)
        torch.testing.assert_close(batch[i], expected, atol=1e-6, rtol=1e-5)


def test_augment_params_cover_the_paper_ranges() -> None:
    params = T.sample_augment_params(4000, generator=torch.Generator().manual_seed(0))
    assert params.top.min() == 0 and params.top.max() == 16 and params.left.max() == 16
    assert params.brightness.abs().max() <= 63 / 255 and params.brightness.abs().max() > 0.24
    assert 0.2 <= params.contrast.min() < 0.22 and 1.78 < params.contrast.max() <= 1.8


def test_stretch_of_one_gives_the_images_back() -> None:
    images = torch.rand(3, 2, 48, 48)
    assert torch.allclose(T.stretch_batch(images, torch.ones(3, 2)), images, atol=1e-5)


def test_stretch_magnifies_each_axis_about_the_centre() -> None:
    images = torch.zeros(1, 1, 48, 48)
    images[..., 20:28, 22:26] = 1.0  # a centred bar: 8 rows by 4 columns
    out = T.stretch_batch(images, torch.tensor([[1.0, 2.0]]))  # x twice as wide, y unchanged
    rows, cols = (out[0, 0] > 0.5).nonzero(as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (20, 27)
    assert (cols.min().item(), cols.max().item()) == (20, 27)  # 4 columns about the centre become 8
    shrunk = T.stretch_batch(torch.ones(1, 1, 48, 48), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(shrunk, torch.ones_like(shrunk))  # the border extends, no black frame


def test_stretch_factors_are_log_uniform_within_the_jitter() -> None:
    factors = T.sample_stretch(20_000, 0.15, torch.Generator().manual_seed(0))
    assert factors.shape == (20_000, 2)
    assert factors.min() >= 1 / 1.15 and factors.max() <= 1.15
    assert abs(factors.log().mean().item()) < 0.005  # shrinking as likely as growing
    assert abs(torch.corrcoef(factors.log().T)[0, 1].item()) < 0.03  # axes independent: aspect changes too
    assert torch.equal(T.sample_stretch(4, 0.0), torch.ones(4, 2))
    with pytest.raises(ValueError, match="jitter"):
        T.sample_stretch(4, 1.0)
