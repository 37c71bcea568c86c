"""Feature extractors: images (B, C, H, W) → features (B, out_features)."""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from simlearn.data.base import INTERPOLATIONS
from simlearn.data.image_files import IMAGENET_MEAN, IMAGENET_STD
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
        """What the backbone expects of its input, for the keys the data config leaves null (``image_size``,
        ``mean``, ``std``; filled before the data is built, :func:`simlearn.build.fill_preprocessing`): e.g. the size
        and statistics its pretrained weights were trained with. Empty: nothing (the data's defaults apply)."""
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
                f"backbone small_cnn needs positive in_channels and image_size (from data.channels and "
                f"data.image_size), got {in_channels} and {image_size}; e.g. data.image_size=64."
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
#: Seconds to wait for a weights host to accept a connection before saying it cannot be reached.
REACH_TIMEOUT_S = 5.0


class NetworkBackbone(Backbone):
    """A backbone around a library network ``self.net`` (torchvision, timm) that can be frozen: ``freeze`` stops
    training it (no gradients, batch-norm statistics kept), so only the head and the loss learn."""

    net: nn.Module
    freeze: bool = False

    def _freeze(self, pretrained: bool) -> None:
        if not self.freeze:
            return
        if not pretrained:
            log.warning("backbone.freeze=true with backbone.pretrained=false freezes random weights.")
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> NetworkBackbone:
        super().train(mode)
        if self.freeze:
            self.net.eval()  # frozen batch norms keep their (pretrained) running statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class TorchvisionBackbone(NetworkBackbone):
    """A torchvision ResNet or VGG without its classifier: images → globally average-pooled features.

    ``out_features`` is the pooled width (resnet18 512, resnet50 2048, vgg16 512: VGG keeps its convolutional part
    only, without the 120M-parameter fully connected classifier, and its max-pools round up so that small inputs
    still reach the last block). ``in_channels`` other than 3 replaces the first convolution (pretrained: the RGB
    filters averaged over colour). ``pretrained`` is ``false`` (random init), ``true`` (the architecture's default
    ImageNet weights) or a weights name such as ``IMAGENET1K_V2``; they are read from torchvision's cache
    (``torch.hub.get_dir()/checkpoints``) and downloaded there when missing. ``freeze`` stops training the backbone
    (no gradients, batch-norm statistics kept), so only the head and the loss learn. :meth:`preprocessing`: 224
    pixels and ImageNet's mean/std, what torchvision's weights were trained with.
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
        self._freeze(bool(pretrained))

    def preprocessing(self) -> dict[str, Any]:
        """torchvision's ImageNet weights: 224-pixel crops normalised with ImageNet's mean and std."""
        return {"image_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


class TimmBackbone(NetworkBackbone):
    """Any `timm <https://github.com/huggingface/pytorch-image-models>`_ model by name, without its classifier
    (``num_classes=0``): images → its pooled features, ``out_features`` = the model's ``num_features``.

    ``name`` is a timm model name, optionally with a pretrained tag (``resnet50``, ``vit_base_patch14_dinov2.lvd142m``,
    ``convnext_tiny.fb_in22k``; ``timm.list_models()`` lists them). ``in_channels`` other than 3 is timm's
    ``in_chans`` (pretrained first convolutions are adapted by timm). ``pretrained=true`` loads the weights timm names
    for it: from the Hugging Face cache (or torch hub's, for the few models still served by URL) when they are there,
    with no network access at all; downloaded into it when not and the hub is reachable; otherwise one error says which
    file to place where. ``checkpoint_path`` (with ``pretrained=true``) reads the weights from a local file instead
    (timm's ``pretrained_cfg_overlay=dict(file=...)``: a ``.safetensors``/``.pth``/``.bin`` state dict of the model,
    classifier and input channels adapted as for the hub weights). ``model_kwargs`` go to ``timm.create_model``
    (e.g. ``{drop_path_rate: 0.1}``, or ``{img_size: 32}`` for a ViT on small images). ``freeze`` as for torchvision.

    :meth:`preprocessing` is the model's pretrained config (``timm.data.resolve_model_data_config``): its input size
    and the mean/std its weights were trained with; data keys left null take them (see ``simlearn.build``).
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        freeze: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        if not isinstance(in_channels, int) or in_channels < 1:
            raise UserError(f"backbone.in_channels must be a positive integer, got {in_channels!r}.")
        check_timm_name(name)
        if checkpoint_path and not pretrained:
            raise UserError(
                f"backbone.checkpoint_path={checkpoint_path} is read only with pretrained weights; add "
                f"backbone.pretrained=true (or drop backbone.checkpoint_path to start from random weights)."
            )
        self.name = name
        self.freeze = bool(freeze)
        self.model_kwargs = dict(model_kwargs or {})
        overlay, shapes = None, None
        if pretrained:
            weights_file = checkpoint_path or cached_timm_weights(name)
            if weights_file is not None:
                if not Path(weights_file).is_file():
                    raise UserError(
                        f"backbone.checkpoint_path={weights_file} is not a file; give the path of a weights file of "
                        f"{name} (.safetensors, .pth or .bin), or set backbone.pretrained=false."
                    )
                overlay = {"file": str(weights_file)}
                shapes = weights_shapes(weights_file, name, from_cache=not checkpoint_path)
            else:
                check_weights_reachable(name)
        where = f"the weights file {overlay['file']}" if overlay else "its pretrained weights"
        fix = (
            f"give backbone.checkpoint_path a weights file of {name} itself (from timm's hub id "
            f"{timm_weights_source(name)[1] or name}), or set backbone.pretrained=false"
        )
        try:
            with TimmLoadLog() as timm_log:
                self.net = timm.create_model(
                    name,
                    pretrained=bool(pretrained),
                    pretrained_cfg_overlay=overlay,
                    num_classes=0,
                    in_chans=in_channels,
                    **self.model_kwargs,
                )
        except TypeError as error:  # a keyword the architecture does not take
            raise UserError(
                f"backbone.model_kwargs={self.model_kwargs} do not fit timm model {name} ({error}); remove them."
            ) from error
        except (RuntimeError, OSError, ValueError, KeyError) as error:  # bad weights file, unknown tag, download
            message = str(error).strip()
            if "loading state_dict" in message:  # torch's many lines: the first mismatches, what the file holds
                lines = [line.strip() for line in message.splitlines()[1:] if line.strip()]
                more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
                described = f"; {describe_weights(shapes)}" if shapes else ""
                raise UserError(
                    f"backbone timm {name}: {where} does not fit the model: {lines[0].rstrip('.') if lines else ''}"
                    f"{more}{described}. "
                    f"Fix: {fix}."
                ) from error
            raise UserError(
                f"backbone timm {name}: loading {where} failed ({type(error).__name__}: "
                f"{message.splitlines()[0] if message else ''}); check the file or the name, or set "
                f"backbone.pretrained=false."
            ) from error
        if timm_log.missing:
            # timm loads non-strictly once the classifier is dropped: a file of another architecture would leave
            # the model at random weights with nothing but a log line
            some = ", ".join(timm_log.missing[:3]) + (
                f" (and {len(timm_log.missing) - 3} more)" if len(timm_log.missing) > 3 else ""
            )
            unexpected = f"; the file's {', '.join(timm_log.unexpected[:3])} are not the model's" * bool(
                timm_log.unexpected
            )
            described = f"; {describe_weights(shapes)}" if shapes else ""
            raise UserError(
                f"backbone timm {name}: {where} does not fit the model: {len(timm_log.missing)} of its tensors are "
                f"missing from it, e.g. {some}{unexpected}{described}. Fix: {fix}."
            )
        timm_log.replay()
        self.out_features = int(self.net.num_features)
        self._freeze(bool(pretrained))

    def forward(self, images: Tensor) -> Tensor:
        try:
            return self.net(images)
        except (RuntimeError, AssertionError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if not any(word in message for word in ("size", "match model", "Input height", "Input width")):
                raise
            size = self.preprocessing()["image_size"]
            raise UserError(
                f"timm model {self.name} cannot take {images.shape[-2]}×{images.shape[-1]} images ({message}); it is "
                f"built for {size}×{size}: set data.image_size={size} (data held in memory has a fixed size: pick a "
                f"model that takes it, or a ViT with backbone.model_kwargs.img_size={images.shape[-1]})."
            ) from error

    def preprocessing(self) -> dict[str, Any]:
        """The model's evaluation transform from its pretrained config (``timm.data.resolve_model_data_config``): input
        size (``img_size`` in ``model_kwargs`` replaces it), mean/std, ``crop_pct`` and ``interpolation``, so that
        images are resized and centre-cropped as timm's ``create_transform`` does for the published figures."""
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self.net)
        size = self.model_kwargs.get("img_size", config["input_size"][-1])
        if isinstance(size, Sequence):
            size = size[-1]
        if config.get("crop_mode", "center") != "center":
            log.warning(
                "timm model %s evaluates with crop_mode=%s; simlearn centre-crops (crop_pct %s)",
                self.name,
                config["crop_mode"],
                config.get("crop_pct"),
            )
        prep = {
            "image_size": int(size),
            "mean": [float(m) for m in config["mean"]],
            "std": [float(s) for s in config["std"]],
        }
        if config.get("crop_pct"):
            prep["crop_pct"] = float(config["crop_pct"])
        if config.get("interpolation") in INTERPOLATIONS:
            prep["interpolation"] = str(config["interpolation"])
        return prep


class TimmLoadLog(logging.Handler):
    """The keys timm reports missing or unexpected while it loads pretrained weights (it loads them non-strictly and
    only logs what did not fit), collected from its log during a ``with`` block. Its INFO lines are caught without
    reaching any console; :meth:`replay` hands on the records its logger would have passed anyway."""

    LOGGER = "timm.models._builder"
    PATTERN = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        found = self.PATTERN.match(record.getMessage())
        if found:
            keys = [key for key in found.group(2).split(", ") if key]
            (self.missing if found.group(1) == "Missing" else self.unexpected).extend(keys)

    def __enter__(self) -> TimmLoadLog:
        logger = logging.getLogger(self.LOGGER)
        self._saved = (logger.level, logger.propagate, logger.getEffectiveLevel())
        logger.setLevel(logging.INFO)  # the missing keys are logged at INFO
        logger.propagate = False  # only to this handler while it listens
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        level, logger.propagate, _ = self._saved
        logger.setLevel(level)

    def replay(self) -> None:
        """Hand on the records timm's logger would have passed (after the block, when its weights did fit: a file
        that does not is said once, in the error)."""
        logger = logging.getLogger(self.LOGGER)
        for record in self.records:
            if record.levelno >= self._saved[2]:
                logger.handle(record)


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors file's header (nothing else is read); safetensors' own error for
    a file that is not one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118 (not a dict)


def weights_shapes(path: str | os.PathLike, name: str, from_cache: bool = False) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a weights file (a safetensors header only; a ``.pth``/``.bin`` is read as timm
    reads it); a file that cannot be read is one :class:`UserError` with the fix."""
    what = f"the cached weights file {path}" if from_cache else f"backbone.checkpoint_path={path}"
    fix = (
        "delete it so that it is downloaded again, or set backbone.pretrained=false"
        if from_cache
        else f"download the weights of {name} again (a transfer cut short leaves such a file), or set "
        f"backbone.pretrained=false"
    )
    try:
        if str(path).endswith(".safetensors"):
            return safetensors_shapes(path)
        from timm.models import load_state_dict

        return {key: tuple(value.shape) for key, value in load_state_dict(str(path)).items()}
    except Exception as error:  # safetensors, pickle and zip errors alike: the file is not weights
        kind = "safetensors file" if str(path).endswith(".safetensors") else "PyTorch weights file"
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"{what} is not a readable {kind} ({type(error).__name__}: {message}). Fix: {fix}.") from error


def check_timm_name(name: str) -> None:
    """Raise one :class:`UserError` listing close matches when ``name`` is not a timm model."""
    import timm

    if not isinstance(name, str) or not name:
        raise UserError(f"backbone.name must be a timm model name, got {name!r}; e.g. backbone.name=resnet50.")
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    architecture = name.split(".")[0]
    if timm.is_model(name):
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:  # an architecture timm has, with a weights tag it does not
            tags = timm.list_pretrained(f"{architecture}.*")
            tag = name[len(architecture) + 1 :]
            raise UserError(
                f"backbone.name={name!r}: timm has {architecture} but not its weights tag {tag!r}; "
                f"valid: {', '.join(tags[:12]) or architecture}{', …' if len(tags) > 12 else ''}."
            ) from None
        return
    names = timm.list_models()
    close = difflib.get_close_matches(architecture, names, n=6, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise UserError(
        f"backbone.name={name!r} is not a timm model ({hint}); timm {timm.__version__} has {len(names)} models, "
        f"listed by timm.list_models('*pattern*')."
    )


def timm_weights_source(name: str) -> tuple[str, str, list[str]]:
    """Where timm gets ``name``'s pretrained weights: ``("hf", hub id, candidate files)`` or ``("url", url, [])``;
    ``("", "", [])`` for a model without pretrained weights in timm."""
    from timm.models import get_pretrained_cfg

    if name.startswith(("hf-hub:", "hf_hub:")):
        return "hf", name.split(":", 1)[1], ["open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin"]
    config = get_pretrained_cfg(name)
    if config is None:
        return "", "", []
    if config.hf_hub_id:
        files = [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return "hf", config.hf_hub_id, files
    if config.url:
        return "url", config.url, []
    return "", "", []


def cached_timm_weights(name: str) -> str | None:
    """The local file of ``name``'s pretrained weights when it is already in the Hugging Face (or torch hub) cache,
    so that loading it needs no network at all; None when it is not there."""
    kind, where, files = timm_weights_source(name)
    if kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = where.partition("@")
        for filename in files:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    elif kind == "url":
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)
        if path.is_file():
            return str(path)
    return None


def hub_reachable(host: str, timeout_s: float = REACH_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``host``:443 opens within ``timeout_s``; else why not, in a few words (no DNS
    answers at once, so a machine without network is told in milliseconds, not after the hub client's retries)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return None
    except OSError as error:
        return f"{host} cannot be reached ({type(error).__name__}: {error})"


def check_weights_reachable(name: str) -> None:
    """Raise one :class:`UserError` unless ``name``'s pretrained weights can be downloaded now: the model has
    weights in timm, the hub is not switched off (``HF_HUB_OFFLINE``) and its host answers."""
    from huggingface_hub import constants

    kind, where, files = timm_weights_source(name)
    if not kind:
        raise UserError(
            f"timm model {name} has no pretrained weights; set backbone.pretrained=false, or pick a model with "
            f"weights (timm.list_models('{name.split('.')[0]}*', pretrained=True))."
        )
    if kind == "hf":
        repo = where.partition("@")[0]
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        why = "HF_HUB_OFFLINE is set" if offline else hub_reachable(host)
        if why is None:
            return
        url = f"{constants.ENDPOINT}/{repo}/resolve/main/{files[0]}"
        raise UserError(
            f"backbone timm {name}: pretrained weights {repo} ({' or '.join(files)}) are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {why}. Fix: on a machine with network access run "
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and copy its Hugging Face cache "
            f"here (HF_HOME or HF_HUB_CACHE point to it), or download {url} and set "
            f"backbone.checkpoint_path=/path/to/{files[0]}; or set backbone.pretrained=false."
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)
    why = hub_reachable(urlparse(where).hostname or "")
    if why is not None:
        raise UserError(
            f"backbone timm {name}: pretrained weights {where} are not in the torch hub cache ({path}) and {why}. "
            f"Fix: download them on a machine with network access and place the file at {path} (TORCH_HOME moves "
            f"it), or set backbone.checkpoint_path=/path/to/file; or set backbone.pretrained=false."
        )


def _load(module: nn.Module, state: dict[str, Tensor], name: str) -> None:
    path = Path(torch.hub.get_dir()) / "checkpoints"
    load_weights(
        module,
        state,
        f"the pretrained weights in {path}",
        "delete the file to download it again, or set backbone.pretrained=false",
        label=f"{name} ({type(module).__name__})",
    )


def describe_weights(shapes: Mapping[str, Sequence[int]]) -> str:
    """What a weights file holds, in a few words: how many tensors and values, and its first names with shapes (a
    reader tells a ViT's ``blocks.0.attn.qkv.weight`` from a ResNet's ``layer1.0.conv1.weight`` at a glance)."""
    if not shapes:
        return "the file holds no tensors"
    values = sum(math.prod(shape) for shape in shapes.values())
    shown = ", ".join(f"{key} {list(shape)}" for key, shape in list(shapes.items())[:3])
    return f"the file holds {len(shapes)} tensors ({values:,} values), e.g. {shown}"


def weights_mismatch(
    module: nn.Module,
    shapes: Mapping[str, Sequence[int]],
    ignored: Sequence[str] = (),
    label: str | None = None,
) -> str | None:
    """How weights of these names and shapes do not fit ``module`` (called ``label``, else by its class): its first
    missing keys, the file's first unexpected ones and mismatched shapes, in one line; None when they fit. Keys
    starting with one of ``ignored`` (a classifier that was dropped) are not unexpected."""
    own = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    missing = [key for key in own if key not in shapes]
    unexpected = [key for key in shapes if key not in own and not key.startswith(tuple(ignored))]
    shaped = [key for key in own if key in shapes and tuple(shapes[key]) != own[key]]
    if not (missing or unexpected or shaped):
        return None

    def some(keys: Sequence[str]) -> str:
        return ", ".join(keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(own)} tensors are missing: {some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} are not the model's: {some(unexpected)}")
    if shaped:
        key = shaped[0]
        parts.append(
            f"{len(shaped)} have another shape, e.g. {key} is {list(shapes[key])} in the file, {list(own[key])} in "
            f"the model"
        )
    return f"{label or type(module).__name__}: {'; '.join(parts)}; {describe_weights(shapes)}"


def load_weights(module: nn.Module, state: Mapping[str, Tensor], what: str, fix: str, label: str | None = None) -> None:
    """``module.load_state_dict(state)`` (strict); weights that do not fit are one :class:`UserError`: ``what`` do not
    fit ``label`` (the module's class), naming the first missing, unexpected and mis-shaped keys and what the file
    holds, then ``fix``."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    problem = weights_mismatch(module, shapes, label=label)
    if problem is not None:
        raise UserError(f"{what} do not fit {problem}. Fix: {fix}.")
    module.load_state_dict(state)


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
