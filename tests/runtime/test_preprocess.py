"""preprocess.py gives BeitImageProcessorPil's numbers (numpy + Pillow only), for any mode, size and input kind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from beit_deploy.core.errors import UsageError
from beit_deploy.exporter.parity import reference_pixels, sample_images
from beit_deploy.runtime.preprocess import ImageError, center_crop, collect_images, load_image, preprocess
from beit_deploy.core.manifest import Preprocessing

PHOTOS = sample_images()


def processor_pixels(images: list[Image.Image], p: Preprocessing) -> np.ndarray:
    """The ground truth: transformers' PIL processor on RGB images (as parity.reference_pixels builds it)."""
    from transformers import BeitImageProcessorPil

    proc = BeitImageProcessorPil(
        size={"height": p.size[0], "width": p.size[1]}, resample=p.resample, rescale_factor=p.rescale_factor,
        image_mean=list(p.image_mean), image_std=list(p.image_std), do_center_crop=p.crop_size is not None,
        crop_size={"height": p.crop_size[0], "width": p.crop_size[1]} if p.crop_size else None)
    return np.asarray(proc(images=[i.convert("RGB") for i in images], return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("resample", [2, 3])
def test_sample_photos_match_processor(resample):
    p = Preprocessing(size=(48, 80), resample=resample, image_mean=(0.485, 0.456, 0.406),
                      image_std=(0.229, 0.224, 0.225))
    ours = preprocess(PHOTOS, p)
    assert ours.shape == (len(PHOTOS), 3, 48, 80) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_pixels(PHOTOS, p), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,crop", [((72, 72), (64, 64)), ((40, 30), (48, 48)), ((50, 61), (33, 17))])
def test_center_crop_matches_processor(size, crop):
    p = Preprocessing(size=size, resample=3, crop_size=crop)
    np.testing.assert_allclose(preprocess(PHOTOS[:2], p), reference_pixels(PHOTOS[:2], p), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_converts_like_pil(mode):
    base = Image.open(PHOTOS[0]).convert("RGB")
    image = base.convert(mode) if mode not in ("I;16",) else base.convert("L").convert("I;16")
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize(image.size))  # real transparency: alpha is dropped
    p = Preprocessing(size=(32, 32), resample=2)
    np.testing.assert_allclose(preprocess(image, p), processor_pixels([image], p), atol=1e-5, rtol=0)


def test_sixteen_bit_is_clipped_not_scaled():
    values = np.array([[0, 100, 255, 1000, 65535]], dtype=np.uint16)
    image = Image.frombytes("I;16", (5, 1), values.tobytes())
    assert load_image(image).rgb[0, :, 0].tolist() == [0, 100, 255, 255, 255]


@pytest.mark.parametrize("height,width", [(1, 1), (3000, 4000), (1900, 7), (7, 1900)])
def test_odd_sizes(height, width):
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    p = Preprocessing(size=(64, 64), resample=3)
    np.testing.assert_allclose(preprocess(rgb, p), processor_pixels([Image.fromarray(rgb)], p), atol=1e-5, rtol=0)


def test_inputs_of_every_kind_agree(tmp_path):
    p = Preprocessing(size=(32, 48))
    pil = Image.open(PHOTOS[0])
    rgb = np.asarray(pil.convert("RGB"))
    by_path, by_pil, by_array = (preprocess(x, p) for x in (PHOTOS[0], pil, rgb))
    assert by_path.shape == (1, 3, 32, 48)
    np.testing.assert_array_equal(by_path, by_pil)
    np.testing.assert_array_equal(by_path, by_array)
    np.testing.assert_array_equal(preprocess([str(PHOTOS[0]), rgb], p)[1], by_array[0])
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(preprocess(grey, p), preprocess(grey[:, :, None], p))
    assert preprocess([], p).shape == (0, 3, 32, 48)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "sideways.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.size == (40, 20)  # upright: taller than wide
    assert loaded.rgb[:20].mean() > 200 and loaded.rgb[20:].mean() < 50  # white half now on top


def test_center_crop_pads_with_zeros():
    image = np.full((2, 3, 1), 9, np.uint8)
    out = center_crop(image, (4, 5))
    assert out.shape == (4, 5, 1) and out.sum() == 9 * 6 and out[1:3, 1:4].min() == 9


def test_bad_inputs(tmp_path):
    p = Preprocessing(size=(32, 32))
    (tmp_path / "broken.png").write_bytes(Image.open(PHOTOS[0]).tobytes()[:100])
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(PHOTOS[-1].read_bytes()[:2000])
    for bad in (tmp_path / "broken.png", tmp_path / "missing.png", truncated):
        with pytest.raises(ImageError, match=bad.name):
            preprocess(bad, p)
    with pytest.raises(UsageError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), p)
    with pytest.raises(UsageError, match="int"):
        preprocess(42, p)


def test_collect_images(tmp_path):
    files = collect_images([PHOTOS[0], PHOTOS[0].parent])
    assert files[0] == PHOTOS[0] and files[1:] == PHOTOS  # LICENSES.md is not an image
    with pytest.raises(UsageError, match="does not exist"):
        collect_images([tmp_path / "nope"])
    with pytest.raises(UsageError, match="no images"):
        collect_images([tmp_path])
