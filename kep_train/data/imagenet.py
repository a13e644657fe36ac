# SPDX-License-Identifier: Apache-2.0
"""ImageNet-layout data: ``DATA/train/<wnid>/*.JPEG`` and ``DATA/val/<wnid>/*`` image folders.

The number of class folders sets the classifier's size. Images are decoded (by DataLoader
worker processes) with the usual transforms (training: RandomResizedCrop + horizontal flip;
validation: Resize(size * 256/224) + CenterCrop(size)) and travel as uint8; normalisation with
:data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` happens on the device.

Every random augmentation is seeded from (seed, key, image index), not from the worker or the
process: see :class:`ImageFolderData`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kep_common.errors import KepError
from kep_train.data.folders import class_folders, list_images, read_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNetData", "ImageFolderData", "find_classes",
           "imagenet_transforms", "load_imagenet_data", "make_tiny_imagenet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of ``split_dir``.

    Raises
    ------
    KepError
        Missing folder or no class folders.
    """
    if not split_dir.is_dir():
        raise KepError(f"{str(split_dir)!r} is missing: expected the ImageNet layout "
                       "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    classes = class_folders(split_dir)
    if not classes:
        raise KepError(f"{str(split_dir)!r} has no class folders")
    return classes


def _sample_seed(seed: int, key: int, index: int) -> int:
    return ((seed * 1_000_003 + key) * 1_000_000_007 + index) % (2 ** 63)


class ImageFolderData(torch.utils.data.Dataset):
    """Images of an ImageNet-layout split as ``(uint8 CHW tensor, label)``.

    The transform of image ``i`` runs under the seed ``(seed, key, i)``; set ``key`` (e.g.
    stage and epoch) before creating a DataLoader iterator.

    Parameters
    ----------
    samples : list of (path, label)
        The images.
    transform : callable
        PIL image -> uint8 tensor.
    seed : int
        Run seed.
    """

    def __init__(self, samples, transform, seed: int):
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.key = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        img = read_rgb(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.key, i))
            x = self.transform(img)
        return x, label


def imagenet_transforms(size: int, train: bool):
    """PIL image -> uint8 ``[3, size, size]``: RandomResizedCrop + flip for training, Resize
    (``size * 256/224``) + CenterCrop for validation."""
    from torchvision import transforms as T
    if train:
        return T.Compose([T.RandomResizedCrop(size, antialias=True),
                          T.RandomHorizontalFlip(), T.PILToTensor()])
    return T.Compose([T.Resize(max(size, round(size * 256 / 224)), antialias=True),
                      T.CenterCrop(size), T.PILToTensor()])


@dataclass
class ImageNetData:
    """The training and validation splits of an ImageNet-layout folder: the data set of the
    ``imagenet`` pipeline.

    ``name``, ``num_classes``, ``mean``, ``std`` and ``input_shape`` are what
    :class:`kep_train.train.pipeline.Pipeline` reads from any data set.
    """

    classes: list[str]                      # class folder names; label = position
    train: ImageFolderData                  # training transform
    val: ImageFolderData                    # validation transform
    image_size: int                         # pixels, training crop and validation size
    name: str = "imagenet"
    mean: tuple = IMAGENET_MEAN             # per channel, of pixels scaled to [0, 1]
    std: tuple = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)


def load_imagenet_data(data_dir: str | os.PathLike, *, image_size: int, seed: int,
                       subset: int = 0, test_subset: int = 0) -> ImageNetData:
    """List the images of ``data_dir/train`` and ``data_dir/val`` (nothing is decoded yet).

    Parameters
    ----------
    data_dir : path
        ImageNet-layout folder.
    image_size : int
        Training crop and validation size in pixels.
    seed : int
        Run seed of the augmentations (see :class:`ImageFolderData`).
    subset, test_subset : int
        Keep N training / validation images drawn with a fixed seed (class-balanced samples);
        0 keeps all.

    Raises
    ------
    KepError
        Missing split, no class folders, train and val with different classes, no images.
    """
    root = Path(data_dir)
    classes = find_classes(root / "train")
    val_classes = find_classes(root / "val")
    if val_classes != classes:
        raise KepError(f"{str(root / 'val')!r} has {len(val_classes)} class folders, "
                       f"train has {len(classes)}: they must be the same")
    train = list_images(root / "train", classes)
    val = list_images(root / "val", classes)
    g = torch.Generator().manual_seed(0)   # fixed: subsets are class-balanced samples
    if subset:
        train = [train[i] for i in torch.randperm(len(train), generator=g)[:subset]]
    if test_subset:
        val = [val[i] for i in torch.randperm(len(val), generator=g)[:test_subset]]
    return ImageNetData(classes,
                        ImageFolderData(train, imagenet_transforms(image_size, True), seed),
                        ImageFolderData(val, imagenet_transforms(image_size, False), seed),
                        image_size)


def make_tiny_imagenet(root: str | os.PathLike, *, classes: int = 4, train_per_class: int = 8,
                       val_per_class: int = 2, size: int = 32, seed: int = 0) -> Path:
    """Write a tiny generated data set in the ImageNet layout (smoke runs and tests).

    ``root/{train,val}/nXXXXXXXX/NNNN.JPEG``: class-coloured noise images, so that a few steps
    of training can learn something.

    Returns
    -------
    Path
        ``root``.
    """
    import numpy as np
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 67) % 256, (c * 131) % 256, (c * 29 + 90) % 256])
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.JPEG", quality=95)
    return root
