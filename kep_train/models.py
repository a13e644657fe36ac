# SPDX-License-Identifier: Apache-2.0
"""CIFAR models by name: ResNet-20/32/56/110 (He et al. 2016) and VGG-16 with batch norm.

The CIFAR ResNets use 1x1 convolution + BN shortcuts where the shape changes ("option B"), so
every residual add has an int8 tensor of the output's shape on both sides. ImageNet models come
from torchvision (:func:`build_model` with an ImageNet name).
"""

from __future__ import annotations

import torch
from torch import nn

from kep_common.errors import KepError

__all__ = ["CIFAR_MODELS", "IMAGENET_MODELS", "build_model", "BasicBlock", "CifarResNet",
           "VGG"]


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
}

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn")


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a model by name (CIFAR zoo or torchvision ImageNet models), randomly initialised.

    Raises
    ------
    KepError
        For an unknown name (the message lists the known ones).
    """
    if name in CIFAR_MODELS:
        return CIFAR_MODELS[name](num_classes)
    if name in IMAGENET_MODELS:
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    raise KepError(f"unknown model {name!r}; choose one of "
                   f"{', '.join(list(CIFAR_MODELS) + list(IMAGENET_MODELS))}")
