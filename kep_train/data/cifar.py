# SPDX-License-Identifier: Apache-2.0
"""CIFAR-10 as whole uint8 tensors, augmented per batch on tensors (fast on 2 CPU cores).

Two layouts are read from ``data_dir``:

* torchvision's ``cifar-10-batches-py`` (downloaded through torchvision when missing and online);
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (read by
  :mod:`kep_train.data.folders`; classes in alphabetical order, files in name order). A split is
  read only when asked for: the test split alone needs no ``train/`` folder.

:func:`read_cifar10_split` gives a split in the folder's sorted order with every image's file name;
:func:`load_cifar10` puts image folders in a fixed shuffled order (seed 0) so that "the first N
images" of training (``--subset``) are a class-balanced sample, as in the official release.
:func:`load_cifar10_data` gives both splits as one :class:`CifarData`, the data set object of the
``cifar`` pipeline.

Decoded image folders are cached, one ``.pt`` file of plain tensors per split (loaded with
``weights_only=True``), in :func:`cache_dir`: ``$KEP_CACHE`` when set, else
``$XDG_CACHE_HOME/kep_toolkit``, else ``~/.cache/kep_toolkit``. A cache file is named after the
split folder's absolute path and a hash of every image's relative path, label, size and
modification time, so an image added, removed, renamed or replaced in place (even under the same
name) is decoded again; older cache files of the same folder are deleted when a new one is
written. ``use_cache=False`` (``--no-cache`` on the commands) neither reads nor writes it; a
read-only cache folder is not an error. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save
from kep_train.data.folders import class_folders, list_images, read_rgb

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "CifarData", "CifarSplit",
           "load_cifar10", "read_cifar10_split", "load_cifar10_data", "cache_dir",
           "cache_file", "normalize", "augment_batch", "iterate_batches"]

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

_CACHE_VERSION = 3      # bump when the cached tensors' layout or order changes
_SHUFFLE_SEED = 0       # the fixed order of load_cifar10 on image folders


def cache_dir() -> Path:
    """Folder of the decoded-image cache: ``$KEP_CACHE``, else ``$XDG_CACHE_HOME/kep_toolkit``,
    else ``~/.cache/kep_toolkit``."""
    if os.environ.get("KEP_CACHE"):
        return Path(os.environ["KEP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kep_toolkit"


@dataclass
class CifarSplit:
    """One split in its stored order: image folders sorted (class folders, then file names),
    ``cifar-10-batches-py`` in the official order."""

    images: torch.Tensor                    # uint8 [N, 3, 32, 32]
    labels: torch.Tensor                    # int64 [N]
    files: list                             # str per image: path relative to data_dir (posix);
    #                                         "cifar-10-batches-py/test_batch[i]" for torchvision


def _is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "test").is_dir()


def _layouts(root: Path) -> str:
    return (f"expected {str(root)}/cifar-10-batches-py (torchvision layout, downloaded "
            f"automatically when online) or image folders {str(root)}/train/<class>/* and "
            f"{str(root)}/test/<class>/*")


def _scan(root: Path, split: str) -> list[tuple[str, int, int, int]]:
    """``(relative path, label, size, mtime_ns)`` of every image of ``root/split``, sorted."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise KepError(f"CIFAR-10 image folder {str(split_dir)!r} does not exist; "
                       + _layouts(root))
    found = class_folders(split_dir)
    if not found:
        raise KepError(f"{str(split_dir)!r} holds no class folders")
    if tuple(found) != CIFAR10_CLASSES:
        raise KepError(f"{str(split_dir)!r} has class folders {found}, expected "
                       f"{list(CIFAR10_CLASSES)}")
    entries = []
    for path, label in list_images(split_dir, found):   # the one reader's files and checks
        try:
            st = os.stat(path)
        except OSError as e:
            raise KepError(f"cannot read image {path!r}: {e.strerror}") from None
        entries.append((Path(path).relative_to(root).as_posix(), label, st.st_size,
                        st.st_mtime_ns))
    return entries


def cache_file(data_dir: str | os.PathLike, train: bool) -> Path:
    """The cache file that an image-folder split maps to now (it may not exist yet).

    Raises
    ------
    KepError
        No such split folder, wrong class folders, no images.
    """
    root = Path(data_dir)
    split = "train" if train else "test"
    return _cache_path(root, split, _scan(root, split))


def _cache_path(root: Path, split: str, entries) -> Path:
    where = hashlib.sha256(str((root / split).resolve()).encode()).hexdigest()[:12]
    h = hashlib.sha256()
    for rel, label, size, mtime in entries:
        h.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode())
    return cache_dir() / f"cifar10-{split}-v{_CACHE_VERSION}-{where}-{h.hexdigest()[:16]}.pt"


def _read_cache(path: Path, entries) -> CifarSplit | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, weights_only=True)
        files, x, y = d["files"], d["images"], d["labels"]
        ok = (files == [e[0] for e in entries] and x.dtype == torch.uint8
              and tuple(x.shape) == (len(entries), 3, 32, 32)
              and y.tolist() == [e[1] for e in entries])
    except Exception as e:  # a damaged or foreign cache file is rebuilt
        log.info("ignoring unreadable cache file %s (%s)", path, type(e).__name__)
        return None
    if not ok:
        log.info("ignoring cache file %s: it does not match the folder", path)
        return None
    log.debug("decoded images from the cache %s", path)
    return CifarSplit(x, y, list(files))


def _write_cache(path: Path, s: CifarSplit) -> None:
    try:
        atomic_torch_save({"images": s.images, "labels": s.labels, "files": s.files}, path)
    except OSError as e:  # a read-only cache is not fatal
        log.debug("cache %s not written: %s", path, e)
        return
    log.debug("cached the decoded images in %s", path)
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.pt"):   # older versions of the same folder
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass


def _decode(root: Path, entries) -> CifarSplit:
    import numpy as np
    t0 = time.perf_counter()
    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (rel, _, _, _) in enumerate(entries):
        arr = np.asarray(read_rgb(root / rel), dtype=np.uint8)
        if arr.shape != (32, 32, 3):
            raise KepError(f"image {str(root / rel)!r} is {arr.shape[1]}x{arr.shape[0]}, "
                           "CIFAR-10 images are 32x32")
        images[i] = arr
    log.debug("decoded %d images in %.1f s", len(entries), time.perf_counter() - t0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([e[1] for e in entries], dtype=torch.int64)
    return CifarSplit(x, y, [e[0] for e in entries])


def _load_torchvision(root: Path, train: bool, download: bool) -> CifarSplit:
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
    n = x.shape[0]
    if train:   # data_batch_1 .. data_batch_5, 10,000 images each
        files = [f"cifar-10-batches-py/data_batch_{i // 10000 + 1}[{i % 10000}]"
                 for i in range(n)]
    else:
        files = [f"cifar-10-batches-py/test_batch[{i}]" for i in range(n)]
    return CifarSplit(x, torch.tensor(ds.targets, dtype=torch.int64), files)


def read_cifar10_split(data_dir: str | os.PathLike, train: bool, *, download: bool = False,
                       use_cache: bool = True) -> CifarSplit:
    """One CIFAR-10 split in its stored order, with every image's file name.

    Parameters
    ----------
    data_dir : path
        Folder with ``cifar-10-batches-py`` or image folders ``train/<class>/*``,
        ``test/<class>/*`` (only the split asked for must exist).
    train : bool
        Training split (50,000 images) or test split (10,000).
    download : bool
        Allow torchvision to download the data set when neither layout is present.
    use_cache : bool
        Read/write the decoded image folder from/to :func:`cache_dir` (see the module docstring).

    Returns
    -------
    CifarSplit
        Image folders: class folders in alphabetical order, files in name order within a class;
        ``cifar-10-batches-py``: the official order.

    Raises
    ------
    KepError
        Missing data (offline), unreadable images, wrong class folders.
    """
    root = Path(data_dir)
    split = "train" if train else "test"
    if _is_image_folder(root):
        entries = _scan(root, split)
        path = _cache_path(root, split, entries)
        s = _read_cache(path, entries) if use_cache else None
        if s is None:
            log.info("decoding %d %s images of %s%s", len(entries), split, root,
                     f" (cached afterwards in {path.parent})" if use_cache else "")
            s = _decode(root, entries)
            if use_cache:
                _write_cache(path, s)
        return s
    if (root / "cifar-10-batches-py").is_dir() or download:
        return _load_torchvision(root, train, download)
    if not root.exists():
        raise KepError(f"data folder {str(root)!r} does not exist; " + _layouts(root))
    raise KepError(f"CIFAR-10 not found in {str(root)!r}: " + _layouts(root))


def load_cifar10(data_dir: str | os.PathLike, train: bool, *, download: bool = True,
                 use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as ``(images uint8 [N, 3, 32, 32], labels int64 [N])``, in the
    training order: image folders in a fixed shuffled order (seed 0; the first N images are a
    class-balanced sample), ``cifar-10-batches-py`` in the official order.

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
    s = read_cifar10_split(data_dir, train, download=download, use_cache=use_cache)
    if not _is_image_folder(Path(data_dir)):
        return s.images, s.labels
    # folders are sorted by class: a fixed shuffle makes "the first N images" (--subset)
    # a class-balanced sample, as in the official release's order
    perm = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(_SHUFFLE_SEED))
    return s.images[perm].contiguous(), s.labels[perm].contiguous()


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
                      test_subset: int = 0, use_cache: bool = True) -> CifarData:
    """Both splits of CIFAR-10 (see :func:`load_cifar10`), optionally cut to their first images.

    Parameters
    ----------
    data_dir : path
        Folder with ``cifar-10-batches-py`` or ``train/`` + ``test/`` image folders.
    download : bool
        Allow torchvision to download the data set when neither layout is present.
    subset, test_subset : int
        Keep only the first N training / test images; 0 keeps all.
    use_cache : bool
        Read/write decoded image folders from/to :func:`cache_dir`.

    Raises
    ------
    KepError
        Missing data (offline), unreadable images, wrong class folders.
    """
    train_x, train_y = load_cifar10(data_dir, True, download=download, use_cache=use_cache)
    test_x, test_y = load_cifar10(data_dir, False, download=download, use_cache=use_cache)
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
