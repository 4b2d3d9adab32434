"""2-D pictures (PNG, JPEG) through Pillow's plugins: read as ``(H, W)`` grey values (palette
indices for label masks) after a size check on the header alone, and label masks written as
PNG.

Orientation: an EXIF ``Orientation`` tag (a phone or camera picture of a screen, a JPEG
exported "rotated" by a viewer) is applied on read (``PIL.ImageOps.exif_transpose``), so the
array is the picture as every viewer displays it. Masks are written in that displayed
orientation without an EXIF tag, so a mask and its picture line up on screen (and in covseg's
overlay); for tags 2-8 a mask's pixels therefore follow the display, not the file's stored rows
(for tags 5-8 its height is the stored width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.io.common import Image, check_size, quiet_reading
from covseg.errors import DataError

__all__ = ["read_picture", "write_png_labels"]

#: The EXIF tag that says how a picture is displayed (1 = as stored; 2-8 flips and turns).
_ORIENTATION = 0x0112


def read_picture(path: Path, *, labels: bool = False) -> Image:
    """Read a PNG or JPEG picture as ``(H, W)`` (``affine=None``).

    Args:
        path: the picture.
        labels: a label mask: palette PNGs keep their indices (else grey through the palette).

    Raises:
        DataError: neither PNG nor JPEG data, unreadable, larger than
            :data:`~covseg.data.io.common.MAX_SIDE`, or not 2-D after conversion.
    """
    with quiet_reading("PIL"):
        try:
            with _open_picture(path) as pic:
                width, height = pic.size  # lazy: only the header is read so far
                check_size(path, (height, width), (height, width))
                pic.load()
                array = _picture_array(_upright(pic), labels)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: unreadable picture ({type(err).__name__}: {err})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D picture, got shape {tuple(array.shape)}")
    return Image(array, None, "png", path)


def _open_picture(path: Path) -> Any:
    """The PNG/JPEG plugin opened on ``path`` (header only). ``PIL.Image.open`` is not used: its
    decompression-bomb check warns or raises before covseg's own size limit could apply."""
    from PIL import JpegImagePlugin, PngImagePlugin

    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile(str(path))
    if magic.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile(str(path))
    raise DataError(f"{path}: unreadable picture (neither PNG nor JPEG data)")


def _upright(pic: Any) -> Any:
    """``pic`` turned as its EXIF ``Orientation`` tag says (itself when untagged or tag 1)."""
    from PIL import ImageOps

    if pic.getexif().get(_ORIENTATION, 1) in (1, None):
        return pic
    return ImageOps.exif_transpose(pic)


def _picture_array(pic: Any, labels: bool) -> np.ndarray:
    """Grey values of a loaded picture; palette indices instead when ``labels``."""
    mode = pic.mode
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.array(pic)
    if mode == "1":
        return np.array(pic).astype(np.uint8)
    if labels and mode in ("P", "PA"):
        return np.array(pic.getchannel("P"))
    if labels and mode == "LA":
        return np.array(pic.getchannel("L"))
    return np.array(pic.convert("L"))  # palette via its colours, RGB(A), LA, CMYK, ...


def write_png_labels(labels: np.ndarray, path: Path) -> None:
    """Write uint8 ``labels`` as a grey PNG, foreground scaled to 255 when binary (``{0, 255}``)
    so that an image viewer shows it; covseg's readers take any value > 0 as foreground."""
    from PIL import Image as PILImage

    top = max(int(labels.max()), 1)
    scaled = labels if top > 1 else labels * 255
    PILImage.fromarray(np.ascontiguousarray(scaled), mode="L").save(path, format="PNG")
