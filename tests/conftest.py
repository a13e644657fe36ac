# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: a tiny CIFAR-10-shaped image-folder data set made on the fly, the
``python -m kep_train`` command line run in the test process, and the scripts of
``benchmarks/`` loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kep_train.data.cifar import CIFAR10_CLASSES


def make_image_folder(root, n_train=12, n_test=3, seed=0):
    """Write ``root/{train,test}/<class>/NNNN.png`` 32x32 images, class-coloured plus noise."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(CIFAR10_CLASSES):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array([(c * 25) % 256, (c * 70) % 256, (c * 140) % 256])
                img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """Path of a tiny CIFAR-10 image-folder tree (120 train, 30 test images)."""
    return make_image_folder(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KEP_CACHE", str(tmp_path_factory.getbasetemp() / "kep_cache"))


@pytest.fixture
def run_cli():
    """``python -m kep_train ARGS`` in the test process: ``run_cli(args)`` returns the exit
    code, also when the command ends with ``SystemExit``."""
    from kep_train.__main__ import main

    def run(args):
        try:
            return main(args)
        except SystemExit as e:
            return e.code
    return run


@pytest.fixture
def one_line_error(capsys):
    """Check that a CLI failed with exit code 2 and exactly one ``error: ...`` line on stderr
    (no traceback); returns that line."""
    def check(code):
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        return lines[0]
    return check


#: the folder of the benchmark scripts (they are scripts, not a package)
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="session")
def bench_script():
    """``load(name)``: ``benchmarks/<name>.py`` imported as a module (once per session,
    registered in ``sys.modules`` while the session runs, as dataclasses and pickling need)."""
    loaded = {}

    def load(name):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"kep_{name}_under_test",
                                                          BENCH / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            loaded[name] = mod
        return loaded[name]

    yield load
    for mod in loaded.values():
        sys.modules.pop(mod.__name__, None)
