"""Feature extractors: images (B, C, H, W) → features (B, out_features)."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from simlearn.errors import UserError

log = logging.getLogger(__name__)
#: torchvision names weight files ``<name>-<first hex digits of their sha256>.pth``.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


class Backbone(nn.Module):
    """The interface of every backbone: images (B, C, H, W) → features (B, :attr:`out_features`).

    A new backbone family is one subclass (set ``out_features`` in ``__init__``, implement ``forward``) and one YAML
    in ``configs/backbone/`` whose ``_target_`` names it; the head is sized from ``out_features``.
    """

    #: width of the features ``forward`` returns
    out_features: int

    def preprocessing(self) -> dict[str, Any]:
        """What the backbone expects of its input, for the keys the data config leaves open (``image_size``,
        ``mean``, ``std``): e.g. the statistics its pretrained weights were trained with. Empty: nothing."""
        return {}


class SmallCNN(Backbone):
    """A VGG-style stack of conv-BN-ReLU blocks for small images (8×8 digits, 28×28 MNIST).

    Each block but the last halves the resolution while it is still at least 4 pixels, so the same config works
    for any input size; global average pooling then gives ``out_features = widths[-1]``.
    """

    def __init__(
        self, in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_channels < 1 or image_size < 1:
            raise UserError(
                f"backbone small_cnn needs positive in_channels and image_size, got {in_channels} and {image_size}."
            )
        if not widths or any(w < 1 for w in widths):
            raise UserError(f"backbone.widths must be a non-empty list of positive ints, got {list(widths)}.")
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(True),
            ]
            if i < len(widths) - 1 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


#: torchvision architectures offered as backbones, with the width of their pooled features.
TORCHVISION_BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "vgg16": 512}
#: torchvision's layer layouts of the VGG variants (its ``cfgs`` letters).
VGG_LAYOUTS = {"vgg16": "D"}
#: Seconds a socket may wait (connect or read) while pretrained weights download; no network fails fast, not hangs.
DOWNLOAD_TIMEOUT_S = 20.0


class TorchvisionBackbone(Backbone):
    """A torchvision ResNet or VGG without its classifier: images → globally average-pooled features.

    ``out_features`` is the pooled width (resnet18 512, resnet50 2048, vgg16 512: VGG keeps its convolutional part
    only, without the 120M-parameter fully connected classifier, and its max-pools round up so that small inputs
    still reach the last block). ``in_channels`` other than 3 replaces the first convolution (pretrained: the RGB
    filters averaged over colour). ``pretrained`` is ``false`` (random init), ``true`` (the architecture's default
    ImageNet weights) or a weights name such as ``IMAGENET1K_V2``; they are read from torchvision's cache
    (``torch.hub.get_dir()/checkpoints``) and downloaded there when missing. ``freeze`` stops training the backbone
    (no gradients, batch-norm statistics kept), so only the head and the loss learn.
    """

    def __init__(self, name: str, in_channels: int = 3, pretrained: bool | str = False, freeze: bool = False) -> None:
        super().__init__()
        import torchvision

        if name not in TORCHVISION_BACKBONES:
            raise UserError(f"backbone.name={name!r} is not offered; valid: {sorted(TORCHVISION_BACKBONES)}.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise UserError(f"backbone.in_channels must be a positive integer, got {in_channels!r}.")
        self.name = name
        self.freeze = bool(freeze)
        state = load_pretrained_state_dict(name, pretrained) if pretrained else None
        if name.startswith("resnet"):
            net = torchvision.models.get_model(name, weights=None)
            if state is not None:
                _load(net, state, name)
            net.conv1 = _with_in_channels(net.conv1, in_channels)
            net.fc = nn.Identity()
            self.net: nn.Module = net
        else:
            from torchvision.models.vgg import cfgs, make_layers

            features = make_layers(cfgs[VGG_LAYOUTS[name]], batch_norm=False)
            if state is not None:
                features_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
                _load(features, features_state, name)
            for i, layer in enumerate(features):
                if isinstance(layer, nn.MaxPool2d):
                    features[i] = nn.MaxPool2d(2, 2, ceil_mode=True)
            features[0] = _with_in_channels(features[0], in_channels)
            self.net = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = TORCHVISION_BACKBONES[name]
        if self.freeze:
            if not pretrained:
                log.warning("backbone.freeze=true with backbone.pretrained=false freezes random weights.")
            self.net.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        super().train(mode)
        if self.freeze:
            self.net.eval()  # frozen batch norms keep their (pretrained) running statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def _load(module: nn.Module, state: dict[str, Tensor], name: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        path = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"the pretrained weights in {path} do not fit {name} ({str(error).splitlines()[0]}); delete the file "
            f"to download it again, or set backbone.pretrained=false."
        ) from error


def _with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` reading ``in_channels`` channels; its filters averaged over the input channels when they differ."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * conv.in_channels / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def pretrained_weights(name: str, pretrained: bool | str):
    """The torchvision weights enum entry that ``pretrained`` names for architecture ``name``."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name)
    choice = "DEFAULT" if pretrained is True else str(pretrained)
    valid = ["true", *(w.name for w in weights)]
    try:
        return weights[choice]
    except KeyError:
        raise UserError(
            f"backbone.pretrained={pretrained!r} is not a weights name of {name}; valid: false, {valid}."
        ) from None


def load_pretrained_state_dict(name: str, pretrained: bool | str) -> dict[str, Tensor]:
    """ImageNet weights for ``name`` from torchvision's cache, downloaded into it when missing.

    Raises one :class:`UserError` when they cannot be had (no network, bad file), saying where to place the file.
    """
    weights = pretrained_weights(name, pretrained)
    url = weights.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    fix = (
        f"Download {url} on a machine with network access and place it at {path} (the torch hub cache: set "
        f"TORCH_HOME to move it), or set backbone.pretrained=false to start from random weights."
    )
    if not path.is_file():
        try:
            download_weights(url, path)
        except Exception as error:  # URLError, timeouts, HTTP errors, disk errors, hash mismatch
            raise UserError(
                f"backbone {name}: pretrained weights {weights} are not in the torch hub cache ({path}) and "
                f"downloading them failed ({type(error).__name__}: {error}). {fix}"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"backbone {name}: {path} is not a readable weights file ({type(error).__name__}: {error}); delete it. "
            f"{fix}"
        ) from error


def download_weights(url: str, path: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``path`` (checking torchvision's hash prefix); sockets give up after ``timeout_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = HASH_REGEX.search(path.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        log.info("downloading %s to %s", url, path)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix.group(1) if hash_prefix else None)
    finally:
        socket.setdefaulttimeout(previous)
