"""Augmented views of each training image, made on tensors in batches on the training device.

Label-free losses compare several views of one image (``data.views=N``). The views are made after the batch reached
the training device (:meth:`~simlearn.data.base.EmbeddingDataModule.on_after_batch_transfer`), from whatever the
source's loader gave (in-memory tensors, tensors already on the device, decoded image files), so every source gets
the same views and two views cost one more pass of cheap tensor arithmetic, not a second decode per item.

The transforms here are batched: each image of a batch gets its own random parameters (a crop, an angle, a jitter),
drawn on the CPU from a generator seeded by the run's seed, the rank and the batch's number in the run, so that a run
resumed from a checkpoint makes the same views as an uninterrupted one; the pixels are then transformed on the
batch's device (one ``grid_sample`` for the geometry, per-image factors for the colours, a grouped convolution for
the blur). Given one image (C, H, W) they transform it alone, so a preset also serves as a per-item ``augment``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from simlearn.errors import UserError
from simlearn.fields import VIEW_FIELD

__all__ = [
    "ColorJitter",
    "RandomAffine",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "ViewMaker",
    "ViewTransform",
    "view_preset_names",
    "view_transforms",
]


class ViewTransform:
    """A random transform of images in [0, 1]: a batch (B, C, H, W), each image with its own parameters, or one image
    (C, H, W). Parameters are drawn from ``generator`` (the global generator when None)."""

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.dim() == 3:
            return self.apply(images.unsqueeze(0), generator)[0]
        return self.apply(images, generator)

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """The transform of a batch (B, C, H, W)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _chosen(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) < p


def _sample_grid(images: Tensor, theta: Tensor, offsets: Tensor | None = None) -> Tensor:
    """``images`` resampled through the affine maps ``theta`` (B, 2, 3; output → input, normalised coordinates),
    plus a displacement field ``offsets`` (B, H, W, 2); points outside the image read zeros (after the [0, 1] range is
    kept: the background of digits, black borders of photos)."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    if offsets is not None:
        grid = grid + offsets.to(grid)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomResizedCrop(ViewTransform):
    """A random crop of ``scale`` of the image's area with aspect ratio in ``ratio``, resized to the image's size
    (SimCLR's main augmentation; torchvision's ``RandomResizedCrop`` parameters, the output keeps the input size)."""

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise UserError(f"RandomResizedCrop needs 0 < scale[0] ≤ scale[1] ≤ 1 and 0 < ratio, got {scale}, {ratio}.")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        n = len(images)
        area = _uniform(n, *self.scale, generator)
        aspect = torch.exp(_uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), generator))
        width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        # the crop's centre, anywhere that keeps it inside the image (normalised coordinates: the image is [-1, 1])
        cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
        cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, cx, height, cy
        return _sample_grid(images, theta)


class RandomHorizontalFlip(ViewTransform):
    """Each image mirrored left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        flip = _chosen(len(images), self.p, generator).to(images.device).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)


class RandomAffine(ViewTransform):
    """A random rotation (± ``degrees``), shear (± ``shear`` degrees), zoom (``scale``) and shift (± ``translate`` of
    the side), plus an elastic distortion: a smooth random displacement of ``elastic`` × the side at most (a
    ``grid``×``grid`` field of normal offsets, upsampled). One resampling for all of it: for small grey images
    (digits), whose class survives a slanted or bent stroke but not a colour change, which they do not have."""

    def __init__(
        self,
        degrees: float = 15.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.9, 1.1),
        shear: float = 10.0,
        elastic: float = 0.0,
        grid: int = 3,
    ) -> None:
        if degrees < 0 or translate < 0 or shear < 0 or elastic < 0 or not 0 < scale[0] <= scale[1] or grid < 2:
            raise UserError(
                f"RandomAffine needs degrees, translate, shear, elastic ≥ 0, 0 < scale[0] ≤ scale[1] and grid ≥ 2, got "
                f"{degrees}, {translate}, {shear}, {elastic}, {scale}, {grid}."
            )
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, tuple(scale), shear
        self.elastic, self.grid = elastic, grid

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        n = len(images)
        angle = torch.deg2rad(_uniform(n, -self.degrees, self.degrees, generator))
        shear = torch.deg2rad(_uniform(n, -self.shear, self.shear, generator))
        zoom = _uniform(n, *self.scale, generator)
        shift = _uniform(2 * n, -2 * self.translate, 2 * self.translate, generator).view(n, 2)
        cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
        # output → input map: the inverse of zooming by `zoom` after rotating and shearing
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos / zoom, (-sin + tan * cos) / zoom
        theta[:, 1, 0], theta[:, 1, 1] = sin / zoom, (cos + tan * sin) / zoom
        theta[:, :, 2] = shift
        offsets = None
        if self.elastic > 0:
            coarse = torch.randn(n, 2, self.grid, self.grid, generator=generator) * self.elastic
            size = images.shape[-2:]
            offsets = F.interpolate(coarse.to(images.device), size=size, mode="bicubic", align_corners=False)
            offsets = offsets.clamp(-2 * self.elastic, 2 * self.elastic).permute(0, 2, 3, 1)
        return _sample_grid(images, theta, offsets)


class ColorJitter(ViewTransform):
    """With probability ``p``, each image's brightness, contrast and (colour images) saturation scaled by its own
    factor in [1 − x, 1 + x], and its hue turned by up to ± ``hue`` of a full turn (a rotation of the chroma plane
    of YIQ, linear and so batched), in that order, clamped to [0, 1]. Grey images get brightness and contrast only."""

    def __init__(
        self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1, p: float = 0.8
    ) -> None:
        if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
            raise UserError(
                f"ColorJitter needs factors ≥ 0 and hue ≤ 0.5, got {brightness, contrast, saturation, hue}."
            )
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        n, device = len(images), images.device
        chosen = _chosen(n, self.p, generator)

        def factor(x: float) -> Tensor:
            values = _uniform(n, 1 - x, 1 + x, generator)
            return torch.where(chosen, values, torch.ones(n)).to(device).view(-1, 1, 1, 1)

        brightness, contrast, saturation = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        turn = torch.where(chosen, _uniform(n, -self.hue, self.hue, generator), torch.zeros(n)) * 2 * math.pi
        images = (images * brightness).clamp(0, 1)
        grey = _grey(images)
        images = ((images - grey.mean(dim=(1, 2, 3), keepdim=True)) * contrast + grey.mean((1, 2, 3), True)).clamp(0, 1)
        if images.shape[1] != 3:
            return images
        images = ((images - _grey(images)) * saturation + _grey(images)).clamp(0, 1)
        if self.hue == 0:
            return images
        yiq = torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(images), images)
        cos, sin = turn.cos().to(images).view(-1, 1, 1), turn.sin().to(images).view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], i * cos - q * sin, i * sin + q * cos], dim=1)
        return torch.einsum("ij,bjhw->bihw", _YIQ_TO_RGB.to(images), yiq).clamp(0, 1)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _grey(images: Tensor) -> Tensor:
    """The luminance (B, 1, H, W) of colour images (ITU-R 601, as torchvision), or grey images themselves."""
    if images.shape[1] != 3:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class RandomGrayscale(ViewTransform):
    """Each colour image turned grey (its luminance in all three channels) with probability ``p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        chosen = _chosen(len(images), self.p, generator).to(images.device).view(-1, 1, 1, 1)
        return torch.where(chosen, _grey(images).expand_as(images), images)


class RandomGaussianBlur(ViewTransform):
    """With probability ``p``, each image blurred by a Gaussian of its own ``sigma`` (in [sigma[0], sigma[1]] pixels,
    kernel ``kernel_fraction`` of the side, odd, at least 3: SimCLR's 10 %); separable, one grouped convolution per
    direction for the whole batch."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0), kernel_fraction: float = 0.1, p: float = 0.5) -> None:
        if not 0 < sigma[0] <= sigma[1] or not 0 < kernel_fraction <= 1:
            raise UserError(f"RandomGaussianBlur needs 0 < sigma[0] ≤ sigma[1], 0 < kernel_fraction ≤ 1: {sigma}.")
        self.sigma, self.kernel_fraction, self.p = tuple(sigma), kernel_fraction, p

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = images.shape
        chosen = _chosen(n, self.p, generator)
        sigma = _uniform(n, *self.sigma, generator)
        size = max(3, int(self.kernel_fraction * min(h, w)) // 2 * 2 + 1)
        x = torch.arange(size, dtype=torch.float32) - size // 2
        kernels = torch.exp(-(x**2) / (2 * sigma.view(-1, 1) ** 2))
        kernels = kernels / kernels.sum(dim=1, keepdim=True)
        kernels = kernels.to(images).repeat_interleave(c, dim=0)  # one kernel per image and channel
        flat = F.pad(images.reshape(1, n * c, h, w), (size // 2,) * 4, mode="reflect")
        flat = F.conv2d(flat, kernels.view(n * c, 1, 1, size), groups=n * c)
        flat = F.conv2d(flat, kernels.view(n * c, 1, size, 1), groups=n * c)
        return torch.where(chosen.to(images.device).view(-1, 1, 1, 1), flat.view(n, c, h, w), images)


def view_preset_names() -> list[str]:
    """The presets of ``configs/augment/`` made of view transforms (what ``data.view_augment`` can name)."""
    from simlearn.config import config_dir

    return sorted(
        path.stem
        for path in (config_dir() / "augment").glob("*.yaml")
        if f"_target_: {__name__}." in path.read_text() and "torchvision" not in path.read_text()
    )


def view_transforms(view_augment: Any) -> list[ViewTransform]:
    """The transforms of ``data.view_augment``: a preset's name (its YAML in ``configs/augment/``, e.g. ``ssl``), a
    mapping with ``transforms`` (a composed preset) or a list of transforms. A name that is not such a preset is one
    line naming those that are."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from simlearn.config import config_dir

    if isinstance(view_augment, str):
        path = config_dir() / "augment" / f"{view_augment}.yaml"
        if view_augment not in view_preset_names():
            what = "is not a preset of view transforms" if path.is_file() else "does not exist"
            raise UserError(
                f"data.view_augment={view_augment} {what}; valid: {view_preset_names()} (presets of configs/augment/ "
                f"made of simlearn.data.views transforms), e.g. data.view_augment=ssl."
            )
        view_augment = instantiate(OmegaConf.load(path))
    if view_augment is None:
        return []
    if isinstance(view_augment, Mapping) or OmegaConf.is_dict(view_augment):
        view_augment = view_augment.get("transforms") or []
    return list(view_augment)


class ViewMaker:
    """``views`` augmented views of every image of a training batch, made by ``transforms`` (each a
    :class:`ViewTransform`, in order) on the batch's device.

    The batch's images come normalised (``mean``/``std``) from any source; they are brought back to [0, 1], each view
    transformed and normalised again. The result holds ``views × B`` rows, view-major (rows ``v·B … v·B + B − 1`` are
    view ``v`` of the batch's images in order), the field :data:`~simlearn.fields.VIEW_FIELD` (each row's view) and
    every other field repeated per view, so ``index`` names each row's image.
    """

    def __init__(
        self, transforms: Sequence[Any], views: int, mean: Sequence[float], std: Sequence[float], seed: int = 0
    ) -> None:
        if views < 2:
            raise UserError(f"a ViewMaker makes at least 2 views of each image, got {views}.")
        not_batched = [t for t in transforms if not isinstance(t, ViewTransform)]
        if not_batched:
            raise UserError(
                f"data.views={views} makes the views in batches on the training device, which needs the batched "
                f"transforms of simlearn.data.views; data.view_augment holds {type(not_batched[0]).__name__}, which "
                f"would give the whole batch one random draw: use data.view_augment=ssl (photos) or ssl_digits (small "
                f"grey images), or give simlearn.data.views transforms."
            )
        if not transforms:
            raise UserError(
                f"data.views={views} but data.view_augment has no transforms, so every view would be the same image: "
                f"use data.view_augment=ssl (photos) or ssl_digits (small grey images)."
            )
        self.transforms = list(transforms)
        self.views = views
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.seed = seed

    def generator(self, batch_number: int, rank: int = 0) -> torch.Generator:
        """The generator of one batch's parameters: a function of the seed, the rank and the batch's number in the
        run only, so the same batch gets the same views in a resumed run."""
        return torch.Generator().manual_seed(hash((self.seed, rank, batch_number)) % 2**63)

    def __call__(self, batch: Mapping[str, Tensor], batch_number: int, rank: int = 0) -> dict[str, Tensor]:
        if "image" not in batch:
            raise UserError(
                f"data.views={self.views} makes views of each item's image, but this data's batches hold "
                f"{sorted(batch)} (pairs of images?); use data.views=1 with this data."
            )
        images = batch["image"]
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        plain = (images.float() * std + mean).clamp(0, 1)
        generator = self.generator(batch_number, rank)
        made = []
        for _ in range(self.views):
            view = plain
            for transform in self.transforms:
                view = transform(view, generator)
            made.append((view - mean) / std)
        n = len(images)
        out = {
            key: value.repeat(self.views, *([1] * (value.dim() - 1))) for key, value in batch.items() if key != "image"
        }
        out["image"] = torch.cat(made).to(images.dtype)
        out[VIEW_FIELD] = torch.arange(self.views, device=images.device).repeat_interleave(n)
        return out
