"""Target architectures, written as ordinary ``nn.Module`` classes (slth traces them like any
user model): ``mlp``, ``lenet5``, ``resnet20`` (CIFAR-style, option-A shortcuts), ``digits_cnn``.

Every model carries ``input_shape`` (C, H, W) or (d,), so ``load_target(model)`` needs no shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SlthError

MODELS = ("mlp", "lenet5", "resnet20", "digits-cnn")


def _pooled(n: int, k: int = 2) -> int:
    return n // k


class MLPNet(nn.Module):
    """Linear layers with ReLU between them (no activation after the last)."""

    def __init__(self, dims, bias: bool = True):
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or min(dims) < 1:
            raise SlthError(f"an MLP needs at least two widths >= 1, got {dims}")
        self.input_shape = (dims[0],)
        layers = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(torch.flatten(x, 1))


def mlp(dims, bias: bool = True) -> MLPNet:
    return MLPNet(dims, bias)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (padding 2) - ReLU - maxpool 2 - conv 16@5x5 - ReLU - maxpool 2 -
    flatten - fc 120 - ReLU - fc 84 - ReLU - fc ``classes``."""

    def __init__(self, in_shape=(1, 28, 28), classes: int = 10):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        oh, ow = _pooled(_pooled(h) - 4), _pooled(_pooled(w) - 4)
        if oh < 1 or ow < 1:
            raise SlthError(f"LeNet5 needs images of at least 12x12 pixels, got {h}x{w}; use "
                            "--model digits-cnn for 8x8 digits")
        self.input_shape = (c, h, w)
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * oh * ow, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet5(in_shape=(1, 28, 28), classes: int = 10) -> LeNet5:
    return LeNet5(in_shape, classes)


class ShortcutA(nn.Module):
    """Option-A shortcut (He et al. 2016): subsample by 2, zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.before = (planes - in_planes) // 2
        self.after = planes - in_planes - self.before

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(in_planes, planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, Sec. 4.2): 3 stages of ``n`` basic blocks."""

    def __init__(self, n: int = 3, in_channels: int = 1, classes: int = 10, in_size: int = 28):
        super().__init__()
        self.input_shape = (in_channels, in_size, in_size)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(planes, width, stride if b == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet20(in_channels: int = 1, classes: int = 10, in_size: int = 28) -> ResNet:
    """ResNet-20 (3 blocks per stage, ~270k weights) for ``in_size`` x ``in_size`` images."""
    return ResNet(3, in_channels, classes, in_size)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: conv 8@3x3 (pad 1) - ReLU - maxpool 2 - conv 16@3x3 (pad 1) -
    ReLU - maxpool 2 - flatten - fc ``classes``."""

    def __init__(self, in_shape=(1, 8, 8), classes: int = 10):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        if h < 4 or w < 4:
            raise SlthError(f"digits-cnn needs images of at least 4x4 pixels, got {h}x{w}")
        self.input_shape = (c, h, w)
        self.features = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(16 * (h // 4) * (w // 4), classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def digits_cnn(in_shape=(1, 8, 8), classes: int = 10) -> DigitsCNN:
    return DigitsCNN(in_shape, classes)


def build(name: str, in_shape, classes: int = 10, hidden=(500,), bias: bool = False) -> nn.Module:
    """The model ``name`` (one of ``MODELS``) for inputs of ``in_shape`` (C, H, W)."""
    c, h, w = in_shape
    if name == "mlp":
        return mlp([c * h * w, *hidden, classes], bias=bias)
    if name == "lenet5":
        return lenet5(in_shape, classes)
    if name == "resnet20":
        if h != w:
            raise SlthError(f"resnet20 here takes square images, got {h}x{w}")
        return resnet20(c, classes, h)
    if name == "digits-cnn":
        return digits_cnn(in_shape, classes)
    raise SlthError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
