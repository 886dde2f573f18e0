"""Colours for label maps: the ADE20K classes and palette, a deterministic palette otherwise, and the pictures
`beit-deploy predict --masks/--overlay` writes (a PNG of class ids; the photo with coloured classes and a legend).

ADE20K colours are the standard ones of the 150-class benchmark (as in mmsegmentation's ADE20KDataset), in
the order of `core.registry.ADE20K_CLASSES`.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..core.files import write_atomic
from ..core.registry import ADE20K_CLASSES
from .preprocess import ImageError

MARK_KEY = "beit-deploy"  # the PNG text key whose value says which kind of output a file is

ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


def is_ade(labels: dict[int, str]) -> bool:
    """True when `labels` are ADE20K's 150 classes (names compared without case or surrounding spaces)."""
    if len(labels) != len(ADE20K_CLASSES):
        return False
    same = sum(labels.get(i, "").strip().lower() == name for i, name in enumerate(ADE20K_CLASSES))
    return same >= 0.9 * len(ADE20K_CLASSES)  # tolerate a few spelling variants ("bed " vs "bed")


def deterministic_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct-ish colours: hues spaced by the golden ratio, two brightness levels. Same n, same
    colours, on every machine."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0 if i % 2 == 0 else 0.7) for i in range(n)]
    return np.round(np.asarray(colours, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def palette_for(labels: dict[int, str]) -> np.ndarray:
    """(num_classes, 3) uint8: the ADE20K palette when the labels are ADE's, else the deterministic one."""
    if is_ade(labels):
        return np.asarray(ADE20K_PALETTE, dtype=np.uint8)
    return deterministic_palette(max(len(labels), max(labels, default=-1) + 1))


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours (ids beyond the palette wrap around)."""
    return palette[label_map % len(palette)]


def save_mask(label_map: np.ndarray, path: Path) -> Path:
    """Write class ids as pixel values: 8-bit greyscale PNG if every id fits, else 16-bit. Replaces only an
    earlier mask (see `_save_marked`)."""
    ids = label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)
    return _save_marked(Image.fromarray(ids), Path(path), "mask")


def overlay(rgb: np.ndarray, label_map: np.ndarray, labels: dict[int, str], alpha: float = 0.5,
            max_legend: int = 20) -> Image.Image:
    """The photo (H, W, 3) with each class tinted in its colour, and a legend of the classes present (largest
    first) in a white panel on the right."""
    palette = palette_for(labels)
    blend = (rgb.astype(np.float32) * (1 - alpha) + colorize(label_map, palette).astype(np.float32) * alpha)
    photo = Image.fromarray(np.round(blend).astype(np.uint8), "RGB")
    ids, counts = np.unique(label_map, return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts, kind="stable")]][:max_legend]
    return _with_legend(photo, [(palette[i % len(palette)], labels.get(i, str(i))) for i in present])


def _with_legend(photo: Image.Image, entries: list[tuple[np.ndarray, str]]) -> Image.Image:
    font = ImageFont.load_default()
    row, swatch, pad = 16, 12, 6
    width = pad * 3 + swatch + max((int(font.getlength(text)) for _, text in entries), default=0)
    canvas = Image.new("RGB", (photo.width + width, max(photo.height, pad * 2 + row * len(entries))), "white")
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (colour, text) in enumerate(entries):
        x, y = photo.width + pad, pad + k * row
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + swatch + pad, y), text, fill="black", font=font)
    return canvas


def save_overlay(rgb: np.ndarray, label_map: np.ndarray, labels: dict[int, str], path: Path) -> Path:
    """Write `overlay(...)` as a PNG. Replaces only an earlier overlay (see `_save_marked`)."""
    return _save_marked(overlay(rgb, label_map, labels), Path(path), "overlay")


def _save_marked(image: Image.Image, path: Path, kind: str) -> Path:
    """Write `image` as a PNG carrying beit-deploy's mark for `kind` (a tEXt chunk), atomically (a hidden
    exclusive temporary name, then a rename: never through a link). An existing file at `path` is replaced only
    when it is a plain file carrying the same mark, an earlier output of the same kind; anything else (an input
    photo, a mask where an overlay goes, a link) is left as it is and ImageError says so."""
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file() or marked_kind(path) != kind:
            raise ImageError(f"'{path}' exists and is not a {kind} beit-deploy wrote: it is left as it is; choose "
                             f"an empty folder for --{kind}s{' DIR' if kind == 'mask' else ''} or move it away")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(MARK_KEY, kind)
    return write_atomic(path, lambda handle: image.save(handle, format="PNG", pnginfo=info))


def marked_kind(path: Path) -> str | None:
    """The kind ("mask", "overlay") a PNG written by beit-deploy says it is; None for any other file."""
    try:
        with Image.open(path, formats=["PNG"]) as image:  # the header and text chunks only
            kind = image.info.get(MARK_KEY)  # text chunks before the pixels: nothing is decoded
    except Exception:  # noqa: BLE001 - unreadable or not a PNG: not ours
        return None
    return kind if kind in ("mask", "overlay") else None


def output_name(image: str, taken: set[str]) -> str:
    """'<image stem>.png', with -2, -3... when another image of the same stem was already written."""
    stem, k = Path(image).stem or "image", 1
    name = f"{stem}.png"
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name
