# SPDX-License-Identifier: Apache-2.0
"""Image-folder data sets: ``split/<class>/<image>`` trees, the one reader of both CIFAR-10 and
ImageNet layouts.

Classes are the sub-folders of a split in alphabetical order (label = position); within a class,
image files are taken in file-name order. Images are decoded with Pillow and converted to RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

from kep_common.errors import KepError

__all__ = ["IMAGE_SUFFIXES", "class_folders", "list_images", "read_rgb"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"})


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
        No image at all.
    """
    split_dir = Path(split_dir)
    samples = []
    for c, cls in enumerate(classes):
        for p in sorted((split_dir / cls).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                samples.append((str(p), c))
    if not samples:
        raise KepError(f"{str(split_dir)!r} holds no images")
    return samples


def read_rgb(path: str | os.PathLike):
    """The image file ``path`` decoded as an RGB :class:`PIL.Image.Image` (file closed).

    Raises
    ------
    KepError
        Unreadable or corrupt file.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise KepError(f"cannot read image {str(path)!r}: {type(e).__name__}") from None
