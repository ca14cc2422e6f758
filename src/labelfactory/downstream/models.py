"""Segmentation networks for the downstream evaluation, by name.

Every builder takes ``(num_classes, **options)`` and returns a
:class:`SegmentationNet` (a DeepLabV3: backbone → ASPP head → bilinear
upsampling) whose forward gives logits ``[B, C, H, W]`` at the input size.
Weights start random; ``weights`` / ``backbone_weights`` options load local
state-dict files (nothing is downloaded).

The ResNet builders reproduce torchvision's DeepLabV3 layout and state-dict
keys with their defaults (output stride 8, ImageNet stem, atrous rates
12/24/36, width 1) and add the knobs tiny images on a CPU need:
``small_stem`` (a 3×3 stride-1 first conv and no max-pool), ``output_stride``,
``input_scale`` (resize the input by a factor inside the model, the logits
back), so a 2-pixel part of a 32×32 image still covers a feature cell;
``atrous_rates`` sized to the feature map; and ``width`` / ``head_channels``
to shrink the network to a one-minute CPU budget.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.models.segmentation.deeplabv3 import ASPP

from labelfactory.core.registry import Registry

SEGMENTATION_MODELS: Registry[Callable[..., "SegmentationNet"]] = Registry("segmentation model")


class WeightsError(ValueError):
    """A weights file is unreadable or does not fit the model it is loaded into."""


class SegmentationNet(nn.Module):
    """DeepLabV3 returning logits at the input resolution.

    ``backbone`` maps images to ``{"out": features}``; ``classifier`` maps
    features to logits. State-dict keys match torchvision's ``DeepLabV3``
    without the auxiliary head.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, input_scale: float = 1.0):
        super().__init__()
        if input_scale <= 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.backbone = backbone
        self.classifier = classifier
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def deeplab_head(in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256) -> nn.Sequential:
    """torchvision's ``DeepLabHead`` (same keys) with a configurable width."""
    return nn.Sequential(
        ASPP(in_channels, tuple(atrous_rates), channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


def _dilate(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a strided ResNet stage into a dilated one (torchvision's
    ``replace_stride_with_dilation``, also for ``BasicBlock``): the first 3×3
    conv keeps the previous dilation and loses its stride, the rest dilate."""
    convs = [c for block in layer for c in (block.conv1, block.conv2) if c.kernel_size == (3, 3)]
    for i, conv in enumerate(convs):
        d = previous if i == 0 else dilation
        conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
    layer[0].downsample[0].stride = (1, 1)


_RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def resnet_trunk(arch: str, output_stride: int = 8, small_stem: bool = False,
                 width: float = 1.0) -> tuple[nn.Sequential, int]:
    """torchvision's ResNet up to ``layer4`` (same module names and init) with a
    ``width`` multiplier on every stage, an optional small stem, and the last
    stages dilated instead of strided down to ``output_stride``. Returns the
    trunk and its output channels."""
    block, depths = _RESNETS[arch]
    stride = 1 if small_stem else 4
    allowed = [stride * 2**k for k in range(1, 4)]
    if output_stride not in allowed:
        raise ValueError(f"output_stride {output_stride} impossible for {arch} "
                         f"({'small' if small_stem else 'ImageNet'} stem); choose one of {allowed}")
    stem = max(1, round(64 * width))
    layers: dict[str, nn.Module] = {
        "conv1": nn.Conv2d(3, stem, 3, 1, 1, bias=False) if small_stem else nn.Conv2d(3, stem, 7, 2, 3, bias=False),
        "bn1": nn.BatchNorm2d(stem),
        "relu": nn.ReLU(inplace=True),
        "maxpool": nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1),
    }
    inplanes = stem
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths)):
        planes, first_stride = max(1, round(planes * width)), 1 if i == 0 else 2
        out = planes * block.expansion
        down = None
        if first_stride != 1 or inplanes != out:
            down = nn.Sequential(conv1x1(inplanes, out, first_stride), nn.BatchNorm2d(out))
        layers[f"layer{i + 1}"] = nn.Sequential(block(inplanes, planes, first_stride, down),
                                                *(block(out, planes) for _ in range(n - 1)))
        inplanes = out
    trunk = nn.Sequential(OrderedDict(layers))
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    dilation = 1
    for name in ("layer2", "layer3", "layer4"):
        if stride * 2 <= output_stride:
            stride *= 2
        else:
            _dilate(getattr(trunk, name), dilation, dilation * 2)
            dilation *= 2
    return trunk, inplanes


def _deeplabv3_resnet(arch: str, num_classes: int, output_stride: int = 8, small_stem: bool = False,
                      width: float = 1.0, atrous_rates: Sequence[int] = (12, 24, 36), head_channels: int = 256,
                      input_scale: float = 1.0) -> SegmentationNet:
    trunk, channels = resnet_trunk(arch, output_stride, small_stem, width)
    backbone = IntermediateLayerGetter(trunk, return_layers={"layer4": "out"})
    return SegmentationNet(backbone, deeplab_head(channels, num_classes, atrous_rates, head_channels), input_scale)


def _register_resnet(arch: str) -> None:
    def build(num_classes: int, **options) -> SegmentationNet:
        return _deeplabv3_resnet(arch, num_classes, **options)

    build.__doc__ = (f"DeepLabV3 on {arch}; options: output_stride, small_stem, width, atrous_rates, "
                     "head_channels, input_scale.")
    SEGMENTATION_MODELS.register(f"deeplabv3_{arch}")(build)


for _arch in ("resnet18", "resnet50", "resnet101"):
    _register_resnet(_arch)


@SEGMENTATION_MODELS.register("deeplabv3_mobilenet_v3_large")
def deeplabv3_mobilenet_v3_large(num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36),
                                 head_channels: int = 256, input_scale: float = 1.0) -> SegmentationNet:
    """torchvision's DeepLabV3-MobileNetV3-Large (output stride 16, no aux head)."""
    tv = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    in_channels = tv.classifier[0].convs[0][0].in_channels
    return SegmentationNet(tv.backbone, deeplab_head(in_channels, num_classes, atrous_rates, head_channels),
                           input_scale)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or torch (``.pt``/``.pth``) file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a state dict (name → tensor), got {type(sd).__name__}")
    return sd


def load_state_dict_checked(module: nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``sd`` into ``module`` strictly; any missing, unexpected or mis-shaped
    tensor is a :class:`WeightsError` that names them and ``source``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", shapes)) if keys]
    if problems:
        raise WeightsError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a whole-model state-dict file strictly (see :func:`load_state_dict_checked`)."""
    load_state_dict_checked(module, read_state_dict(path), path)


def _trunk_state_dict(name: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a torchvision classification state dict that the segmentation
    backbone holds: ResNets lose ``fc``, MobileNetV3 keeps ``features`` unprefixed."""
    if name == "deeplabv3_mobilenet_v3_large":
        return {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def build_segmentation_model(name: str, num_classes: int, weights: str | Path | None = None,
                             backbone_weights: str | Path | None = None, **options) -> SegmentationNet:
    """Build a registered model. ``weights``: a whole-model state-dict file;
    ``backbone_weights``: a torchvision classification state dict for the
    backbone (e.g. ImageNet ResNet-50), its classifier ignored."""
    model = SEGMENTATION_MODELS.get(name)(num_classes, **options)
    if backbone_weights is not None:
        sd = _trunk_state_dict(name, read_state_dict(backbone_weights))
        load_state_dict_checked(model.backbone, sd, backbone_weights)
    if weights is not None:
        load_weights(model, weights)
    return model
