# SPDX-License-Identifier: Apache-2.0
"""CIFAR models by name: ResNet-20/32/56/110 (He et al. 2016) and VGG-16 with batch norm, and
the user's own models (``module.path:callable``).

The CIFAR ResNets use 1x1 convolution + BN shortcuts where the shape changes ("option B"), so
every residual add has an int8 tensor of the output's shape on both sides. ImageNet models come
from torchvision (:func:`build_model` with an ImageNet name).

**User models.** A model spec ``package.module:factory`` names a callable in the user's code:
the module is imported with the current directory on ``sys.path`` (as ``python -m`` does), and
the callable is called as ``factory(num_classes=N)``, or as ``factory()`` when its signature
takes no ``num_classes`` (no such parameter and no ``**kwargs``); it must return an
``nn.Module`` whose output is ``[N, num_classes]`` for an input ``[N, C, H, W]`` (checked once
with a dummy forward in eval mode). Only a spec the user typed on the command line is ever
imported: a checkpoint or ``.kep`` file that records one never causes an import by itself
(:func:`kep_train.train.checkpoint.model_from_checkpoint`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

import torch
from torch import nn

from kep_common.errors import KepError

__all__ = ["CIFAR_MODELS", "IMAGENET_MODELS", "build_model", "BasicBlock", "CifarResNet",
           "VGG", "is_user_model", "parse_model_spec", "load_user_factory", "build_user_model",
           "CIFAR_INPUT_SHAPE"]

#: the input of the CIFAR models (C, H, W)
CIFAR_INPUT_SHAPE = (3, 32, 32)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus identity or 1x1-conv-BN shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3 stages of ``n`` basic blocks, 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-16 with batch norm for 32x32 inputs, one linear classifier (512 -> classes)."""

    def __init__(self, cfg=None, num_classes: int = 10):
        super().__init__()
        layers, c = [], 3
        for v in (cfg or _VGG16):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


CIFAR_MODELS = {
    "resnet20": lambda nc: CifarResNet(20, nc),
    "resnet32": lambda nc: CifarResNet(32, nc),
    "resnet56": lambda nc: CifarResNet(56, nc),
    "resnet110": lambda nc: CifarResNet(110, nc),
    "vgg16": lambda nc: VGG(None, nc),
    # a small VGG-style network (max pooling, no residuals) that fits every packaged board
    "vgg-small": lambda nc: VGG([32, "M", 64, "M", 128, 128, "M"], nc),
}

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn")


def build_model(name: str, num_classes: int = 10, *,
                input_shape: tuple = CIFAR_INPUT_SHAPE, option: str = "--model") -> nn.Module:
    """Build a model by name (CIFAR zoo, torchvision ImageNet models, or a user model spec
    ``module.path:callable``), randomly initialised.

    Parameters
    ----------
    name : str
        A zoo name or a user model spec (:func:`build_user_model`).
    num_classes : int
        Classes of the classifier.
    input_shape : tuple
        ``(C, H, W)`` of the dummy input that checks a user model's output shape.
    option : str
        The command-line option that gave a user model (how its errors name it).

    Raises
    ------
    KepError
        For an unknown name (the message lists the known ones), or a user model that cannot be
        imported, built or run (one line).
    """
    if is_user_model(name):
        return build_user_model(name, num_classes, input_shape=input_shape, option=option)
    if name in CIFAR_MODELS:
        return CIFAR_MODELS[name](num_classes)
    if name in IMAGENET_MODELS:
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    raise KepError(f"unknown model {name!r}; choose one of "
                   f"{', '.join(list(CIFAR_MODELS) + list(IMAGENET_MODELS))}")


# --------------------------------------------------------------------------------------------
# the user's own models: "package.module:callable"

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_user_model(name) -> bool:
    """Whether ``name`` is meant as a user model spec (it holds a ``:``); nothing is imported."""
    return isinstance(name, str) and ":" in name


def parse_model_spec(spec: str, option: str = "--model") -> tuple[str, str]:
    """Split ``package.module:callable`` into ``(module, attribute path)``; syntax only,
    nothing is imported.

    Raises
    ------
    KepError
        Not two dotted Python names joined by one ``:``.
    """
    module, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise KepError(f"{option} {spec!r}: expected a model name or module.path:callable "
                       "(dotted Python names, e.g. mynets.small:build)")
    return module, attr


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def load_user_factory(spec: str, option: str = "--model"):
    """Import the module of ``spec`` (current directory on ``sys.path``) and return its
    callable.

    Raises
    ------
    KepError
        One line: bad syntax, module not found, the import raised, attribute missing, not
        callable.
    """
    module, attr = parse_model_spec(spec, option)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:    # as `python -m` would have it
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()       # see files written since the last import
    where = f"{option} {spec!r}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        if e.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise KepError(f"{where}: no module named {e.name!r} (looked in the current "
                           f"directory {cwd!r} and the Python path)") from None
        raise KepError(f"{where}: importing {module!r} failed: {_first_line(e)}") from None
    except (Exception, SystemExit) as e:   # the user's module code: anything may happen
        raise KepError(f"{where}: importing {module!r} failed: {_first_line(e)}") from None
    obj = mod
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = module if i == 0 else f"{module}:{'.'.join(attr.split('.')[:i])}"
            raise KepError(f"{where}: {owner!r} has no attribute {part!r}") from None
        except (Exception, SystemExit) as e:
            raise KepError(f"{where}: reading {part!r} failed: {_first_line(e)}") from None
    if not callable(obj):
        raise KepError(f"{where}: {attr!r} is an object of type {type(obj).__name__}, not a "
                       "callable that returns a model")
    return obj


def _takes_num_classes(factory) -> bool:
    """Whether ``factory`` accepts the keyword ``num_classes`` (True when its signature is
    unknown: the call then tells)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == "num_classes" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) for p in params)


def build_user_model(spec: str, num_classes: int = 10, *,
                     input_shape: tuple = CIFAR_INPUT_SHAPE,
                     option: str = "--model") -> nn.Module:
    """Build the user's model ``spec`` (``package.module:callable``).

    The callable is called as ``factory(num_classes=num_classes)``, or ``factory()`` when it
    takes no ``num_classes``; the result must be an ``nn.Module`` whose output, for a dummy
    input ``[2, *input_shape]`` in eval mode, is ``[2, num_classes]``. The model is returned in
    training mode. Errors name the spec as ``option`` gave it.

    Raises
    ------
    KepError
        One line for every failure (see :func:`load_user_factory`; the factory raises, returns
        no ``nn.Module``, the dummy forward raises or gives another shape).
    """
    factory = load_user_factory(spec, option)
    where = f"{option} {spec!r}"
    kwargs = {"num_classes": num_classes} if _takes_num_classes(factory) else {}
    call = f"{spec.partition(':')[2]}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as e:
        raise KepError(f"{where}: {call} raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise KepError(f"{where}: {call} returned an object of type {type(model).__name__}, "
                       "not a torch.nn.Module")
    x = torch.zeros(2, *input_shape)
    want = [2, num_classes]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except (Exception, SystemExit) as e:
        raise KepError(f"{where}: the model fails on an input of shape {list(x.shape)}: "
                       f"{_first_line(e)}") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor):
        raise KepError(f"{where}: the model returns an object of type {type(out).__name__} "
                       f"for an input of shape {list(x.shape)}, expected one tensor of shape "
                       f"{want} (N, num_classes)")
    if list(out.shape) != want:
        raise KepError(f"{where}: the model's output has shape {list(out.shape)} for an input "
                       f"of shape {list(x.shape)}, expected {want} (N, num_classes)")
    return model
