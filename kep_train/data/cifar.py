# SPDX-License-Identifier: Apache-2.0
"""CIFAR-10 as whole uint8 tensors, augmented per batch on tensors (fast on 2 CPU cores).

Two layouts are read from ``data_dir``:

* torchvision's ``cifar-10-batches-py`` (downloaded through torchvision when missing and online);
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (read by
  :mod:`kep_train.data.folders`; classes in alphabetical order; images are put in a fixed
  shuffled order so that the first N are a class-balanced sample).

:func:`load_cifar10_data` gives both splits as one :class:`CifarData`, the data set object of the
``cifar`` pipeline.

Decoded images are cached as a ``.pt`` file of plain tensors (loaded with ``weights_only=True``)
in the cache folder, keyed by the data folder's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save
from kep_train.data.folders import class_folders, list_images, read_rgb

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "CifarData", "load_cifar10",
           "load_cifar10_data", "cache_dir", "normalize", "augment_batch", "iterate_batches"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def cache_dir() -> Path:
    """Folder for decoded data sets: ``$KEP_CACHE`` or ``$XDG_CACHE_HOME/kep_toolkit``."""
    if os.environ.get("KEP_CACHE"):
        return Path(os.environ["KEP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kep_toolkit"


def _is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _folder_key(split_dir: Path) -> str:
    h = hashlib.sha256(str(split_dir.resolve()).encode())
    for cls in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        st = cls.stat()
        h.update(f"{cls.name}:{st.st_mtime_ns}:{len(os.listdir(cls))}".encode())
    return h.hexdigest()[:16]


def _decode_folder(split_dir: Path, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    found = class_folders(split_dir)
    if classes is not None and tuple(found) != tuple(classes):
        raise KepError(f"{str(split_dir)!r} has class folders {found}, expected {list(classes)}")
    if not found:
        raise KepError(f"{str(split_dir)!r} holds no class folders")
    images, labels = [], []
    for path, label in list_images(split_dir, found):
        arr = np.asarray(read_rgb(path), dtype=np.uint8)
        if arr.shape != (32, 32, 3):
            raise KepError(f"image {path!r} is {arr.shape[1]}x{arr.shape[0]}, "
                           "CIFAR-10 images are 32x32")
        images.append(arr)
        labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _load_torchvision(root: Path, train: bool, download: bool):
    import torchvision
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except Exception as e:  # urllib errors, corrupt archives, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KepError(
            f"CIFAR-10 not found in {str(root)!r} and the download through torchvision failed "
            f"({msg}); provide either {str(root)}/cifar-10-batches-py (torchvision layout) or an "
            f"image-folder tree {str(root)}/train/<class>/*.jpg and {str(root)}/test/<class>/*.jpg"
        ) from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64)


def load_cifar10(data_dir: str | os.PathLike, train: bool, *, download: bool = True,
                 use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as ``(images uint8 [N, 3, 32, 32], labels int64 [N])``.

    Parameters
    ----------
    data_dir : path
        Folder with ``cifar-10-batches-py`` or ``train/`` + ``test/`` image folders.
    train : bool
        Training split (50,000 images) or test split (10,000).
    download : bool
        Allow torchvision to download the data set when neither layout is present.
    use_cache : bool
        Read/write the decoded tensors from/to :func:`cache_dir` (image-folder layout).

    Raises
    ------
    KepError
        Missing data (offline), unreadable images, wrong class folders.
    """
    root = Path(data_dir)
    split = "train" if train else "test"
    if _is_image_folder(root):
        split_dir = root / split
        cache = cache_dir() / f"cifar10-{split}-v2-{_folder_key(split_dir)}.pt"
        if use_cache and cache.is_file():
            try:
                d = torch.load(cache, weights_only=True)
                return d["images"], d["labels"]
            except Exception:
                pass  # a damaged cache is rebuilt below
        x, y = _decode_folder(split_dir, CIFAR10_CLASSES)
        # folders are sorted by class: a fixed shuffle makes "the first N images" (--subset)
        # a class-balanced sample, as in the official release's order
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[perm].contiguous(), y[perm].contiguous()
        if use_cache:
            try:
                atomic_torch_save({"images": x, "labels": y}, cache)
            except OSError:
                pass  # a read-only cache is not fatal
        return x, y
    if (root / "cifar-10-batches-py").is_dir() or download:
        if not root.exists() and not download:
            raise KepError(f"data folder {str(root)!r} does not exist")
        return _load_torchvision(root, train, download)
    raise KepError(
        f"CIFAR-10 not found in {str(root)!r}: expected {str(root)}/cifar-10-batches-py "
        f"(torchvision layout, downloaded automatically when online) or image folders "
        f"{str(root)}/train/<class>/* and {str(root)}/test/<class>/*")


@dataclass
class CifarData:
    """Both CIFAR-10 splits as whole tensors: the data set of the ``cifar`` pipeline.

    ``name``, ``num_classes``, ``mean``, ``std`` and ``input_shape`` are what
    :class:`kep_train.train.pipeline.Pipeline` reads from any data set.
    """

    train_x: torch.Tensor                   # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor                   # int64 [N]
    test_x: torch.Tensor                    # uint8 [M, 3, 32, 32]
    test_y: torch.Tensor                    # int64 [M]
    name: str = "cifar"
    num_classes: int = 10
    mean: tuple = CIFAR10_MEAN              # per channel, of pixels scaled to [0, 1]
    std: tuple = CIFAR10_STD
    input_shape: tuple = (3, 32, 32)        # C, H, W


def load_cifar10_data(data_dir: str | os.PathLike, *, download: bool = True, subset: int = 0,
                      test_subset: int = 0) -> CifarData:
    """Both splits of CIFAR-10 (see :func:`load_cifar10`), optionally cut to their first images.

    Parameters
    ----------
    data_dir : path
        Folder with ``cifar-10-batches-py`` or ``train/`` + ``test/`` image folders.
    download : bool
        Allow torchvision to download the data set when neither layout is present.
    subset, test_subset : int
        Keep only the first N training / test images; 0 keeps all.

    Raises
    ------
    KepError
        Missing data (offline), unreadable images, wrong class folders.
    """
    train_x, train_y = load_cifar10(data_dir, True, download=download)
    test_x, test_y = load_cifar10(data_dir, False, download=download)
    if subset:
        train_x, train_y = train_x[:subset], train_y[:subset]
    if test_subset:
        test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    return CifarData(train_x, train_y, test_x, test_y)


def normalize(images_u8: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` to float32, scaled to [0, 1] then normalised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images_u8.float().div_(255.0) - m) / s


def augment_batch(images_u8: torch.Tensor, generator: torch.Generator, *, pad: int = 4,
                  flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, on a uint8 batch."""
    n, c, h, w = images_u8.shape
    padded = torch.nn.functional.pad(images_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))                    # [N, H]
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))                    # [N, W]
    if flip:
        do_flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(do_flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    idx_c = torch.arange(c).view(1, c, 1, 1)
    return padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def iterate_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                    generator: torch.Generator | None = None, train: bool = False,
                    drop_last: bool = False):
    """Yield ``(uint8 images, labels)`` batches; shuffled and augmented when ``train``."""
    n = images.shape[0]
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = images[idx]
        if train:
            xb = augment_batch(xb, generator)
        yield xb, labels[idx]
