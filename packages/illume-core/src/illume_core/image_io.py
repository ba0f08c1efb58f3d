"""Safe, bounded image loading: every source and every PIL mode becomes one RGB image, or one clear error.

Images come from users, datasets and the network, so decoding is bounded before any pixel is
decoded: the byte size is checked before reading, the pixel count from the header before `load()`.
Every failure (empty file, not an image, truncated data, too large, decompression bomb) raises
`ImageLoadError`, whose message names the source and the problem.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import read_bounded

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)

#: Default ceilings: far above any training image, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000  # e.g. 8000 x 8000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class ImageLoadError(ValueError):
    """An image could not be loaded. `source` names it, `problem` says why."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"cannot load image {source}: {problem}")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before decoding.

    Attributes:
        max_pixels: largest width * height accepted (read from the header, before decoding).
        max_bytes: largest encoded size accepted, in bytes.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return repr(name)
    return f"<{type(source).__name__}>"


def _read_bounded(source: Any, name: str, max_bytes: int) -> bytes:
    """The encoded bytes of a path, a bytes-like object or a binary file object, at most max_bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(name, "no such file")
        if path.is_dir():
            raise ImageLoadError(name, "is a directory, not an image file")
        try:
            data = read_bounded(path, max_bytes)
        except OSError as err:
            problem = str(err).replace(f"{os.fspath(path)!r} ", "", 1)
            raise ImageLoadError(
                name, f"{problem} (raise max_bytes to accept a larger file)"
            ) from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if isinstance(data, str):
            raise ImageLoadError(name, "file object is in text mode; open it with 'rb'")
    else:
        raise ImageLoadError(
            name,
            f"unsupported source type {type(source).__name__}; pass a path, bytes, a binary file "
            "object, a PIL image or an HxWx3 uint8 array",
        )
    if len(data) == 0:
        raise ImageLoadError(name, "is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageLoadError(
            name, f"data is over the limit of {max_bytes} bytes (raise max_bytes to accept it)"
        )
    return data


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageLoadError(
            name, f"array dtype is {array.dtype}; expected uint8 (scale to 0..255 and cast first)"
        )
    if array.ndim == 2:
        return Image.fromarray(array)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array))
    raise ImageLoadError(
        name, f"array shape is {tuple(array.shape)}; expected HxWx3 (or HxW, HxWx4)"
    )


def _decode(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    with warnings.catch_warnings():
        # Our own max_pixels check below replaces PIL's global decompression-bomb threshold.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageLoadError(name, "not a recognised image format") from None
        except Image.DecompressionBombError as err:
            raise ImageLoadError(name, f"refused as a decompression bomb ({err})") from None
        except OSError as err:
            raise ImageLoadError(name, f"truncated or corrupt image header ({err})") from None
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(name, f"has an empty size {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageLoadError(
                name,
                f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels} "
                "(a possible decompression bomb; raise max_pixels to accept it)",
            )
        try:
            image.load()
        except Image.DecompressionBombError as err:
            raise ImageLoadError(name, f"refused as a decompression bomb ({err})") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(name, f"truncated or corrupt image data ({err})") from None
    return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # PIL's own I;16 -> L conversion clips at 255 instead of scaling; map 0..65535 to 0..255.
    array = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is alpha-composited onto `background`, not dropped."""
    mode = image.mode
    if mode == "RGB":
        return image
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_l(image).convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0  # [0,1] floats or [0,255]
        array = np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "HSV", "LAB"):
        if mode == "LAB":
            raise ImageLoadError(
                f"<{mode} image>", "LAB images are not supported; convert to RGB first"
            )
        return image.convert("RGB")
    raise ImageLoadError(f"<{mode} image>", f"unsupported image mode {mode!r}")


def load_image(
    source: ImageSource,
    *,
    limits: ImageLimits | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Loads one image as RGB with EXIF orientation applied.

    Args:
        source: a path, bytes, a binary file object, a PIL image or an HxWx3 uint8 array.
        limits: byte and pixel ceilings, checked before decoding.
        background: colour that transparent pixels are composited onto.

    Raises:
        ImageLoadError: the source is missing, empty, not an image, truncated, or over a limit.
    """
    limits = limits or ImageLimits()
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
        if image.width * image.height > limits.max_pixels:
            raise ImageLoadError(
                name, f"{image.width}x{image.height} is over max_pixels={limits.max_pixels}"
            )
    elif isinstance(source, np.ndarray):
        image = _from_array(source, name)
        if image.width * image.height > limits.max_pixels:
            raise ImageLoadError(
                name, f"{image.width}x{image.height} is over max_pixels={limits.max_pixels}"
            )
    else:
        image = _decode(_read_bounded(source, name, limits.max_bytes), name, limits)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as err:  # a malformed EXIF block must not crash a data loader
        raise ImageLoadError(name, f"malformed EXIF data ({err})") from None
    try:
        return to_rgb(image, background)
    except ImageLoadError as err:
        raise ImageLoadError(name, err.problem) from None


def load_images(
    sources: Iterable[ImageSource] | Sequence[ImageSource],
    *,
    limits: ImageLimits | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> list[Image.Image]:
    """Loads several images with `load_image`; the first failure raises."""
    return [load_image(s, limits=limits, background=background) for s in sources]
