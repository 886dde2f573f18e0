"""One eager-side preprocessing: export parity and `verify` feed transformers the same pixels for a rotated
phone photo (EXIF orientation applied, as the runner reads it), and both refuse an image above the pixel limit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from beit_deploy.core import tasks
from beit_deploy.core.manifest import read_manifest
from beit_deploy.exporter import parity, pipeline
from beit_deploy.exporter.loading import ModelSpec, load_model
from beit_deploy.proof import verify
from beit_deploy.runtime.preprocess import ImageError, preprocess


@pytest.fixture
def rotated(tmp_path):
    """A 48x80 (H x W as stored) JPEG whose EXIF says "rotate 90 CW to display": upright it is 80x48."""
    rng = np.random.default_rng(0)
    stored = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
    stored[:, :20] = 255  # a bright left band, so orientation matters to the pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(stored).save(folder / "rotated.jpg", exif=exif, quality=100)
    return folder / "rotated.jpg"


def test_export_parity_and_verify_feed_eager_the_same_upright_pixels(tiny_dir, tiny_export, rotated):
    loaded = load_model(ModelSpec(str(tiny_dir("classification"))))
    manifest = read_manifest(tiny_export("classification"))
    pp = loaded.preprocessing.at_resolution(manifest.resolution)
    judge = pipeline._Judge(loaded, tasks.input_specs(loaded.task, loaded.config, manifest.resolution), pp,
                            rotated.parent)
    ref_feeds, art_feeds = verify._feeds(manifest, loaded, [rotated], random=2, seed=loaded.spec.seed)
    exported, verified = judge.batches[0]["pixel_values"], ref_feeds[0]["pixel_values"]
    assert np.array_equal(exported, verified)

    upright = Image.open(rotated).transpose(Image.Transpose.ROTATE_270).convert("RGB")
    assert upright.size == (48, 80)  # (W, H): EXIF 6 turns the stored 80x48 (W x H) photo upright
    expected = parity.reference_processor(pp)(images=[upright], return_tensors="np")["pixel_values"]
    sideways = parity.reference_processor(pp)(images=[Image.open(rotated).convert("RGB")],
                                              return_tensors="np")["pixel_values"]
    assert np.allclose(exported, expected) and not np.allclose(exported, sideways, atol=0.1)
    # and the artifact side (beit-deploy's own preprocessing) reads the photo the same way round
    assert np.allclose(art_feeds[0]["pixel_values"], preprocess([rotated], manifest.preprocessing), atol=0)
    assert np.abs(art_feeds[0]["pixel_values"] - exported).max() < 0.05


def test_the_pixel_limit_holds_on_the_eager_side(rotated, tiny_export):
    manifest = read_manifest(tiny_export("classification"))
    with pytest.raises(ImageError):
        parity.reference_pixels([rotated], manifest.preprocessing, max_pixels=100)
