"""Reading and validating images: files, PIL images and arrays become RGB ``uint8`` arrays.

Everything the library and the CLI accept as an image goes through :func:`to_rgb_array`, so every
caller gets the same checks and the same one-line errors naming the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnlens.errors import ImageReadError, InputError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

MIN_SIDE = 8
"""Smallest accepted image side in pixels; anything smaller holds no usable content."""

MAX_PIXELS = 150_000_000
"""Largest accepted image (pixels); larger files are refused instead of exhausting memory."""


def describe(image: ImageLike, index: int) -> str:
    """A short name for an image in messages: its path, or its position in the input list."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"image #{index} ({type(image).__name__})"


def _open_file(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as handle:
                if handle.width * handle.height > MAX_PIXELS:
                    raise ImageReadError(
                        f"{path}: image is too large ({handle.width}x{handle.height} px, limit "
                        f"{MAX_PIXELS:,} px); downscale it first"
                    )
                handle.load()
                return handle.copy()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: image is too large to decode safely; downscale it first") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated image file ({error})") from None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to RGB uint8. Alpha is composited over white; 16/32-bit is rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert an (H, W), (H, W, 1|3|4) array of any numeric dtype to RGB uint8."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"array of shape {array.shape} looks channels-first; pass (H, W, C) arrays, or a "
            "preprocessed (B, C, H, W) torch tensor"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"array of shape {array.shape} is not an image: expected (H, W), (H, W, 3) or (H, W, 4)")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("float image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"float image values span [{low:.3g}, {high:.3g}]; expected [0, 1] (pass uint8 "
                "arrays for 0-255 data, or a preprocessed torch tensor for normalised data)"
            )
        array = np.round(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        high = int(array.max()) if array.size else 0
        if int(array.min()) < 0:
            raise InputError("integer image contains negative values")
        scale = 65535.0 if high > 255 else 255.0
        if high > 65535:
            scale = float(high)
        array = np.round(array.astype(np.float64) * (255.0 / scale)).astype(np.uint8)
    else:
        raise InputError(f"unsupported image array dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:4].astype(np.float64) / 255.0
        array = np.round(array[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def to_rgb_array(image: ImageLike, index: int = 0) -> np.ndarray:
    """Return ``image`` as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Accepts a file path, a PIL image (any mode: grayscale, palette, RGBA, 16-bit, ...) or a numpy
    array ``(H, W)`` / ``(H, W, 1|3|4)`` of uint8, uint16 or floats in ``[0, 1]``. Transparent
    pixels are composited over white. Raises :class:`ImageReadError` / :class:`InputError` with a
    message naming the image and the problem.
    """
    name = describe(image, index)
    try:
        if isinstance(image, (str, os.PathLike)):
            rgb = _pil_to_rgb(_open_file(Path(image)))
        elif isinstance(image, Image.Image):
            rgb = _pil_to_rgb(image)
        elif isinstance(image, np.ndarray):
            rgb = _array_to_rgb(image)
        else:
            raise InputError(
                f"unsupported image type {type(image).__name__}; pass a file path, a PIL image, "
                "a numpy array or a preprocessed torch tensor"
            )
    except ImageReadError:
        raise
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{name}: image is too small ({width}x{height} px); the minimum is {MIN_SIDE} px per side")
    if height * width > MAX_PIXELS:
        raise InputError(f"{name}: image is too large ({width}x{height} px); downscale it first")
    return rgb


def load_images(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """Read one image or a sequence of images into a list of RGB uint8 ``(H, W, 3)`` arrays."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim <= 3
    ):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images)
    images = list(images)
    if not images:
        raise InputError("no images given")
    return [to_rgb_array(image, index) for index, image in enumerate(images)]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_image_files(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (non-recursive, sorted) into a list of image paths."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{path}: folder contains no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(path)
    if not paths:
        raise InputError("no images given")
    return paths
