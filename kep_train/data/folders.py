# SPDX-License-Identifier: Apache-2.0
"""Image-folder data sets: ``split/<class>/<image>`` trees, the one reader of both CIFAR-10 and
ImageNet layouts.

Classes are the sub-folders of a split in alphabetical order (label = position); within a class,
image files are taken in file-name order. Images are decoded with Pillow and converted to RGB.

Hostile folders fail with one line naming the file: an entry named like an image that is no
regular file (a FIFO is never opened), an image declaring more than :data:`MAX_IMAGE_PIXELS`
pixels (a decompression bomb, refused before decoding), or content of another format than the
common image formats.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from kep_common.errors import KepError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "class_folders", "list_images", "read_rgb"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"})
#: Pillow formats tried on any image file, whatever its suffix (never EPS, PDF and the like)
_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "WEBP", "TIFF", "GIF")
#: images declaring more pixels are refused before decoding (64 Mi; 8192 x 8192)
MAX_IMAGE_PIXELS = 2**26


def class_folders(split_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``split_dir`` (possibly none)."""
    return sorted(p.name for p in Path(split_dir).iterdir() if p.is_dir())


def list_images(split_dir: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image file under ``split_dir/<class>/``, class by class.

    Parameters
    ----------
    split_dir : path
        Folder holding one sub-folder per class.
    classes : list of str
        Class folder names; the label of ``classes[i]`` is ``i``.

    Returns
    -------
    list of (str, int)
        Files whose suffix is in :data:`IMAGE_SUFFIXES` (any case), in file-name order.

    Raises
    ------
    KepError
        No image at all, or an entry named like an image that is no regular file (a FIFO, a
        device, a folder, a dangling link: never opened).
    """
    split_dir = Path(split_dir)
    samples = []
    for c, cls in enumerate(classes):
        for p in sorted((split_dir / cls).iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                regular = stat.S_ISREG(os.stat(p).st_mode)
            except OSError:
                regular = False
            if not regular:
                raise KepError(f"{str(p)!r} is named like an image but is not a regular file")
            samples.append((str(p), c))
    if not samples:
        raise KepError(f"{str(split_dir)!r} holds no images")
    return samples


def read_rgb(path: str | os.PathLike):
    """The image file ``path`` decoded as an RGB :class:`PIL.Image.Image` (file closed).

    The file is opened without blocking and must be a regular file (a FIFO is never read); an
    image declaring more than :data:`MAX_IMAGE_PIXELS` pixels is refused before it is decoded
    (a decompression bomb); only the formats of :data:`IMAGE_SUFFIXES` are tried.

    Raises
    ------
    KepError
        Unreadable, corrupt, oversized or non-regular file (one line naming it).
    """
    from PIL import Image
    path = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise KepError(f"cannot read image {path!r}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KepError(f"cannot read image {path!r}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            fd = -1     # closed by f
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f, formats=_FORMATS) as im:
                    w, h = im.size
                    if w * h > MAX_IMAGE_PIXELS:
                        raise KepError(f"image {path!r} declares {w}x{h} pixels, more than "
                                       f"{MAX_IMAGE_PIXELS}: refused (decompression bomb?)")
                    return im.convert("RGB")
    except KepError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise KepError(f"image {path!r} is too large to decode, refused (decompression bomb?):"
                       f" {str(e).split(',')[0]}") from None
    except Exception as e:  # Pillow raises many types on hostile input (OSError, SyntaxError..)
        raise KepError(f"cannot read image {path!r}: {type(e).__name__}") from None
    finally:
        if fd >= 0:
            os.close(fd)
