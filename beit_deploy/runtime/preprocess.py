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

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import ArtifactError, BeitDeployError, UsageError, describe
from ..core.manifest import Preprocessing
from .embedded import embedded_sizes

ImageLike = Union[str, Path, Image.Image, np.ndarray, bytes]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Images above this many pixels are refused from their header, before decoding (a 12000x12000 PNG can be a
# 140 KB file and 0.6 GB of memory decoded). 64 MP takes 48-50 MP phone photos and 8K frames (33 MP).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ArtifactError):
    """One input image could not be read (missing, corrupt, not an image, too large, unsupported array)."""


@dataclass(frozen=True)
class LoadedImage:
    """An input as RGB uint8 (H, W, 3) after EXIF orientation, with a name for messages and file names."""

    name: str
    rgb: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image as the model sees it before resizing."""
        return self.rgb.shape[0], self.rgb.shape[1]


@dataclass(frozen=True, eq=False)
class Prepared:
    """An input ready for the model: its name, (height, width) upright, pixel values (3, h, w) float32, and the
    full-size RGB uint8 (H, W, 3) only when asked for (overlays), so a batch holds no full-size copies."""

    name: str
    size: tuple[int, int]
    pixels: np.ndarray
    rgb: np.ndarray | None = None


def is_batch(images: Any) -> bool:
    """True for a list/tuple of images; False for one path, PIL image or (H, W[, C]) array."""
    return isinstance(images, (list, tuple))


def check_max_pixels(max_pixels: int | None) -> int | None:
    """A pixel limit as given (None or 0: none of beit-deploy's own); UsageError for a negative one."""
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0):
        raise UsageError(f"max_pixels must be a pixel count (0 or None: no limit), got {max_pixels!r}")
    return max_pixels or None


def open_image(image: ImageLike, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> tuple[str, Image.Image]:
    """One input (path, encoded file bytes, PIL image, HWC/HW uint8 array) -> (name, upright RGB PIL image).
    Files and bytes are checked against `max_pixels` from their header, before anything is decoded; ImageError
    for an unreadable, empty or too large image."""
    max_pixels = check_max_pixels(max_pixels)
    if isinstance(image, (str, Path)):
        return name or str(image), _open(Path(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        name = name or "<image bytes>"
        return name, _decode(io.BytesIO(bytes(image)), name, max_pixels)
    if isinstance(image, Image.Image):
        name = name or getattr(image, "filename", "") or "<PIL image>"
        with decoding(name):
            _check_size(image.size, name, max_pixels)
            image.load()  # a lazily opened image decodes now: a broken one fails here, as one image's error
            return name, _upright_rgb(image, name)
    if isinstance(image, np.ndarray):
        name = name or "<array>"
        array = _checked_array(image)
        with decoding(name):
            _check_size(array.shape[1::-1], name, max_pixels)
            return name, _upright_rgb(_from_array(array), name)
    raise UsageError(f"cannot use a {type(image).__name__} as an image: pass a path, encoded bytes, a PIL image or "
                     "an (H, W, 3) uint8 array")


def load_image(image: ImageLike, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> LoadedImage:
    """One input (path, encoded bytes, PIL image, HWC/HW uint8 array) -> RGB uint8 (H, W, 3), EXIF orientation
    applied."""
    name, rgb = open_image(image, name, max_pixels)
    return LoadedImage(name, np.asarray(rgb, dtype=np.uint8))


def prepare(image: ImageLike, p: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            keep_rgb: bool = False, name: str | None = None) -> Prepared:
    """One input -> Prepared: resized and normalised right away, the full-size image dropped unless kept."""
    name, rgb = open_image(image, name, max_pixels)
    return Prepared(name, (rgb.height, rgb.width), _pixels(rgb, p),
                    np.asarray(rgb, dtype=np.uint8) if keep_rgb else None)


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """size is (width, height), as PIL gives it."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"'{name}' is empty ({height}x{width} pixels): pass an image with pixels in it")
    if max_pixels and width * height > max_pixels:
        raise ImageError(f"'{name}' is {height}x{width} = {width * height / 1e6:.1f} megapixels, above the limit "
                         f"of {max_pixels / 1e6:g} megapixels (a guard against decompression bombs): shrink it, or "
                         "raise the limit (max_pixels, --max-pixels) if you trust it")


def _check_embedded(source: Path | io.BytesIO, name: str, max_pixels: int | None) -> None:
    """The pixel limit on every image a container file (ICO, CUR, ICNS) holds, each read from its own header
    before Pillow opens the file: Pillow decodes an ICO's image inside `Image.open`, at the size the embedded
    image's header says, which may be far larger than the container's."""
    if not max_pixels:
        return
    with (source.open("rb") if isinstance(source, Path) else contextlib.nullcontext(source)) as fobj:
        for size in embedded_sizes(fobj):
            _check_size(size, name, max_pixels)


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """A decoded, upright RGB image from a regular file (never a FIFO or device, which could block)."""
    if not path.is_file():
        raise ImageError(_not_a_file(path))
    return _decode(path, str(path), max_pixels)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    """An encoded image (a file or its bytes) decoded in full now, so truncated data fails here, upright RGB; its
    size (and that of every image a container such as ICO holds) is checked from the headers before decoding."""
    with decoding(name):
        _check_embedded(source, name, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, said once
            im = Image.open(source, formats=_formats())
        try:
            _check_size(im.size, name, max_pixels)
            im.load()  # read now, so truncated files fail here and not later
            rgb = _upright_rgb(im, name)
        except BaseException:
            im.close()
            raise
        if isinstance(source, Path) and getattr(im, "fp", None) is not None:  # multi-frame formats keep the file
            rgb = rgb.copy() if rgb is im else rgb  # open: keep a copy, close it
            im.close()
        return rgb


@contextlib.contextmanager
def decoding(name: str):
    """Any failure while opening, decoding or converting the image `name` becomes its own ImageError.

    The one place that decides it: Pillow's decoders raise far more than their documented errors on crafted
    files (NotImplementedError for a mutated DDS, AttributeError for a SPIDER file, struct.error, TypeError,
    RuntimeError from libavif...), and each of those is this image's failure, never its batch's. Our own typed
    errors pass through; KeyboardInterrupt and SIGTERM (BaseException) are never caught."""
    try:
        yield
    except BeitDeployError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"'{name}' is larger than Pillow's own limit against decompression bombs ({exc}): shrink "
                         "it") from exc
    except MemoryError as exc:
        raise ImageError(f"'{name}': not enough memory to decode it; lower the pixel limit (--max-pixels) or "
                         "shrink it") from exc
    except Exception as exc:  # see above: every decoder failure is this image's
        detail = describe(exc) if isinstance(exc, _DECODE_ERRORS) else f"{type(exc).__name__}: {describe(exc)}"
        raise ImageError(f"'{name}' is not a readable image ({detail}): remove it or replace it") from exc


def _not_a_file(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"image '{path}' is a symbolic link that leads nowhere (broken or looping): fix or remove it"
    if not path.exists():
        return f"image '{path}' does not exist"
    return f"image '{path}' is not a regular file (a folder, FIFO or device): pass image files"


# Formats whose decoding runs another program on the file's content (EPS: Ghostscript, a PostScript
# interpreter): never chosen for an input, whatever its bytes say.
EXTERNAL_PROGRAM_FORMATS = frozenset({"EPS"})


def _formats() -> list[str]:
    """Every format this Pillow reads, less those that run another program (EXTERNAL_PROGRAM_FORMATS)."""
    Image.init()
    return [f for f in Image.OPEN if f not in EXTERNAL_PROGRAM_FORMATS]


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a new image), or itself when it is upright already."""
    return ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image


def _upright_rgb(image: Image.Image, name: str) -> Image.Image:
    """EXIF-oriented RGB PIL image, converted exactly as `image.convert("RGB")`."""
    with decoding(name):
        image = _upright(image)
        return image if image.mode == "RGB" else image.convert("RGB")


def _checked_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UsageError(f"image arrays must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got "
                         f"{array.dtype} {array.shape}")
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _from_array(array: np.ndarray) -> Image.Image:
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def preprocess_one(rgb: np.ndarray, p: Preprocessing) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, h, w) with the processor's resize, crop, rescale, normalise."""
    return _pixels(Image.fromarray(rgb, "RGB"), p)


def _pixels(rgb: Image.Image, p: Preprocessing) -> np.ndarray:
    """RGB PIL image -> float32 (3, h, w): resize in uint8 with the manifest's filter, crop, rescale, normalise."""
    height, width = p.size
    resized = np.asarray(rgb.resize((width, height), resample=p.resample))
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


def preprocess(images: ImageLike | Sequence[ImageLike], p: Preprocessing,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image or a list -> float32 (N, 3, H, W) pixel values, N = 1 for a single image."""
    items = list(images) if is_batch(images) else [images]
    if not items:
        return np.zeros((0, 3, *(p.crop_size or p.size)), dtype=np.float32)
    return np.stack([prepare(i, p, max_pixels).pixels for i in items])


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as their entries named like images (by suffix, sorted, not recursive), whatever
    they are: a FIFO, a looping symbolic link or a folder named `x.jpg` is then reported by the runner as that
    image's error rather than skipped without a word. A missing path or a folder without images is a
    UsageError; unreadable files are left for the runner to report one by one."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"'{path}' does not exist: check the image path")
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UsageError(f"folder '{path}' has no images ({', '.join(IMAGE_SUFFIXES)}): pass image files")
            found += inside
        else:
            found.append(path)
    return found
