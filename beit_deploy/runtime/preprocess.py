"""BEiT preprocessing in numpy + Pillow: the numbers of transformers' `BeitImageProcessorPil`, without torch.

The processor's PIL backend works like this, and so does this module, step for step:

1. the image as RGB uint8 (H, W, 3);
2. resize with Pillow to `size` (height, width) using the manifest's filter (2 bilinear, 3 bicubic) on the
   uint8 image (transformers converts uint8 arrays to PIL without rescaling, so the resize happens in uint8);
3. optional centre crop to `crop_size`, zero-padded where the image is smaller;
4. rescale: `(uint8 as float64 * rescale_factor)` cast to float32;
5. normalise in float32: `(x - mean) / std` per channel.

The result is bit-identical to the processor's for RGB input. Two things differ on purpose, both before
step 1: EXIF orientation is applied (`PIL.ImageOps.exif_transpose`; transformers ignores it, so a phone photo
stored sideways would be classified sideways), and every mode goes to RGB as `Image.convert("RGB")` does
(alpha is dropped, not composited on white; palette images are expanded; "1" becomes 0/255). 16-bit
greyscale ("I;16", "I") is *clipped* to 0..255 by that conversion, not scaled: a 16-bit image whose values
exceed 255 comes out mostly white, so scale it to 8 bits yourself (e.g. `array >> 8`) if that matters.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import ArtifactError, UsageError
from ..core.manifest import Preprocessing

ImageLike = Union[str, Path, Image.Image, np.ndarray, bytes]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageError(ArtifactError):
    """One input image could not be read (missing, corrupt, not an image, unsupported array)."""


@dataclass(frozen=True)
class LoadedImage:
    """An input as RGB uint8 (H, W, 3) after EXIF orientation, with a name for messages and file names."""

    name: str
    rgb: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image as the model sees it before resizing."""
        return self.rgb.shape[0], self.rgb.shape[1]


def is_batch(images: Any) -> bool:
    """True for a list/tuple of images; False for one path, PIL image or (H, W[, C]) array."""
    return isinstance(images, (list, tuple))


def load_image(image: ImageLike, name: str | None = None) -> LoadedImage:
    """One input (path, PIL image, HWC/HW uint8 array, or an encoded file's bytes) -> RGB uint8 (H, W, 3), EXIF
    orientation applied."""
    if isinstance(image, (str, Path)):
        return LoadedImage(name or str(image), _rgb(_open(Path(image))))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return LoadedImage(name or "<image bytes>", _rgb(_decode(io.BytesIO(bytes(image)), name or "image bytes")))
    if isinstance(image, Image.Image):
        return LoadedImage(name or getattr(image, "filename", "") or "<PIL image>", _rgb(image))
    if isinstance(image, np.ndarray):
        return LoadedImage(name or "<array>", _rgb(_from_array(image)))
    raise UsageError(f"cannot use a {type(image).__name__} as an image: pass a path, encoded bytes, a PIL image or "
                     "an (H, W, 3) uint8 array")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image '{path}' does not exist")
    return _decode(path, str(path))


def _decode(source: Path | io.BytesIO, name: str) -> Image.Image:
    """An encoded image (a file or its bytes) decoded in full now, so truncated data fails here, turned upright."""
    try:
        with Image.open(source) as im:
            im.load()  # read now, so truncated files fail here and not later
            return ImageOps.exif_transpose(im)  # a loaded copy, turned upright
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"'{name}' is not a readable image ({exc}): remove it or replace it") from exc


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UsageError(f"image arrays must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got "
                         f"{array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _rgb(image: Image.Image) -> np.ndarray:
    """EXIF-oriented RGB uint8 (H, W, 3), converted exactly as `image.convert("RGB")`."""
    image = ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def preprocess_one(rgb: np.ndarray, p: Preprocessing) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, h, w) with the processor's resize, crop, rescale, normalise."""
    height, width = p.size
    resized = np.asarray(Image.fromarray(rgb, "RGB").resize((width, height), resample=p.resample))
    if p.crop_size is not None:
        resized = center_crop(resized, p.crop_size)
    x = (resized.astype(np.float64) * p.rescale_factor).astype(np.float32)
    mean = np.asarray(p.image_mean, dtype=np.float32)
    std = np.asarray(p.image_std, dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) -> (h, w, C) centre crop; zero padding where the image is smaller (as transformers does)."""
    crop_h, crop_w = int(size[0]), int(size[1])
    h, w = image.shape[:2]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    pad_top, pad_left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    canvas = np.zeros((new_h, new_w, image.shape[2]), dtype=image.dtype)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
    top, left = (h - crop_h) // 2 + pad_top, (w - crop_w) // 2 + pad_left
    return canvas[max(0, top):top + crop_h, max(0, left):left + crop_w]


def preprocess(images: ImageLike | Sequence[ImageLike], p: Preprocessing) -> np.ndarray:
    """One image or a list -> float32 (N, 3, H, W) pixel values, N = 1 for a single image."""
    items = list(images) if is_batch(images) else [images]
    if not items:
        return np.zeros((0, 3, *(p.crop_size or p.size)), dtype=np.float32)
    return np.stack([preprocess_one(load_image(i).rgb, p) for i in items])


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (by suffix, sorted, not recursive). A missing path or a
    folder without images is a UsageError; unreadable files are left for the runner to report one by one."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"'{path}' does not exist: check the image path")
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UsageError(f"folder '{path}' has no images ({', '.join(IMAGE_SUFFIXES)}): pass image files")
            found += inside
        else:
            found.append(path)
    return found
