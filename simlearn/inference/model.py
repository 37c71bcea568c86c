"""Running a trained encoder outside the training loop: the one inference model (:class:`InferenceModel`, what
:func:`load_model` and ``simlearn.load`` give for a checkpoint or a model folder), the device to use, and the
embeddings of a data loader.

Every command that uses a trained model (``simlearn-search``, ``-embed``, ``-serve``, ``-export``) and Python users
hold the same object: the encoder (eval mode, on its device), the image preprocessing it expects, where it came from
and the config that built it; it embeds image files, PIL images, pixel arrays and prepared tensors to unit-length
float32 rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn

from simlearn.data.image_files import image_mode
from simlearn.data.images import DECODE_ERRORS, ImageLoader
from simlearn.errors import UserError
from simlearn.models.module import EmbeddingSet
from simlearn.retrieval.vectors import unit_rows

__all__ = ["EmbeddedFiles", "InferenceModel", "embed", "load_model", "pick_device", "weights_digest"]

#: rows whose norms are within this of 1 are returned as they are (a normalising head's output, up to rounding)
UNIT_TOLERANCE = 1e-6


@dataclass
class EmbeddedFiles:
    """Embeddings (N, d) of the files that could be read, in order, and the files that could not."""

    paths: list[Path]
    embeddings: np.ndarray
    failed: list[tuple[Path, str]]


class InferenceModel:
    """A trained encoder and the image preprocessing it expects, ready to embed: ``model.embed(images)`` gives their
    unit-length float32 embeddings; the cosine of two is their similarity (``emb[0] @ emb[1]``).

    ``source`` is what it was loaded from (a checkpoint file, or a model folder: ``kind``), ``path`` the file its
    weights came from (the checkpoint, or the folder's ``model.safetensors``: galleries embedded with it record it
    and their caches are keyed by its size and time), ``config`` the config it was built from (a checkpoint's
    ``simlearn_config``; a folder's ``config.json`` with its ``preprocessing``). ``digest`` names the model itself,
    whatever file it was read from (:meth:`digest`). ``kind`` ``pixels`` is the raw-pixel embedding of
    :mod:`simlearn.inference.pixels` (no weights; ``path`` is the module that defines it).
    """

    def __init__(
        self,
        encoder: nn.Module,
        preprocessing: Mapping[str, Any],
        config: DictConfig,
        source: str | os.PathLike,
        kind: Literal["checkpoint", "folder", "pixels"],
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        #: ``{"image_size", "channels", "mean", "std"}`` and, where recorded, ``crop_pct``, ``interpolation``
        self.preprocessing = dict(preprocessing)
        self.config = config
        self.source = Path(source)
        self.kind = kind
        self.path = Path(path)
        #: image file → model input, as training's evaluation transform makes it
        self.loader = ImageLoader(self.preprocessing)
        self._digest: str | None = None

    def to(self, device: str | torch.device) -> InferenceModel:
        """This model, its encoder moved to ``device`` (where it embeds from now on)."""
        self.device = torch.device(device)
        self.encoder.to(self.device)
        return self

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.embedding_dim)

    @property
    def digest(self) -> str:
        """The model's identity: the sha256 (hex) of the encoder's weights and buffers (name, dtype, shape and bytes,
        by name) and of the preprocessing, computed on first use and kept. A copied or renamed checkpoint has the same
        digest; another model of the same dimension (other weights), or the same weights with other preprocessing,
        has another: galleries record it (``model_digest``) so that a gallery of another model is told apart from
        one of this model read under another path."""
        if self._digest is None:
            self._digest = weights_digest(self.encoder, self.preprocessing)
        return self._digest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, size, size): one prepared image."""
        return (self.loader.channels, self.loader.image_size, self.loader.image_size)

    def __repr__(self) -> str:
        channels, size, _ = self.input_shape
        return (
            f"InferenceModel({self.kind} {self.source}, {self.embedding_dim}-d, input {channels}x{size}x{size}, "
            f"{self.device})"
        )

    # -- one image -------------------------------------------------------------------------------------------------
    def prepare(self, image: Any) -> Tensor:
        """One image as model input (channels, size, size): a file path, a PIL image, a uint8 array or tensor
        (H, W), (H, W, C) array or (C, H, W) tensor of pixel values, all prepared as the model was trained (converted
        to its channels, resized and centre-cropped, scaled to [0, 1], normalised); or a float tensor/array that
        already is model input (channels, size, size)."""
        if isinstance(image, str | os.PathLike):
            try:
                return self.loader(image)
            except DECODE_ERRORS as error:
                raise UserError(
                    f"{str(image)!r} is not an image that can be read ({type(error).__name__}: {error}); give image "
                    f"files (png, jpg, …), PIL images or pixel arrays."
                ) from error
        if isinstance(image, Image.Image):
            return self.loader.transform(image.convert(image_mode(self.loader.channels)))
        if isinstance(image, np.ndarray) and image.dtype == np.uint8:
            return self.prepare(self._pil(image))
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            pixels = image.detach().cpu()
            if pixels.ndim == 3:  # torchvision's (C, H, W)
                pixels = pixels.permute(1, 2, 0).squeeze(2) if pixels.shape[0] in (1, 3, 4) else pixels
            return self.prepare(self._pil(pixels.numpy()))
        if isinstance(image, np.ndarray | torch.Tensor):
            tensor = torch.as_tensor(image)
            if not tensor.is_floating_point() or tuple(tensor.shape) != self.input_shape:
                raise UserError(self._not_input(tensor))
            return tensor.float()
        raise UserError(
            f"cannot embed a {type(image).__name__}: give image file paths, PIL images, uint8 pixel arrays or "
            f"prepared float tensors (one, a list, or a batch tensor)."
        )

    @staticmethod
    def _pil(pixels: np.ndarray) -> Image.Image:
        try:
            return Image.fromarray(pixels)
        except (TypeError, ValueError) as error:  # Pillow's "Cannot handle this data type" for other shapes
            raise UserError(
                f"a uint8 pixel array must be (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, got shape "
                f"{tuple(pixels.shape)}; give pixels in one of those shapes, a PIL image or a file path."
            ) from error

    def _not_input(self, tensor: Tensor, batch: bool = False) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return (
            f"an image tensor must be model input: float of shape {self.input_shape} (or a batch (N, {shape})), got "
            f"{tensor.dtype} {tuple(tensor.shape)}"
            + (" for a batch" if batch else "")
            + "; pass raw pixels as uint8, a PIL image or a file path to have them prepared."
        )

    # -- embedding -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_tensor(self, batch: Tensor) -> np.ndarray:
        """The unit-length float32 embeddings (N, d) of a batch of prepared images (N, channels, size, size): the
        model's forward pass on its device, one call. A head with ``normalize=false`` gives raw vectors, scaled here
        (unit ones are returned as they are); a row with NaN or inf stays non-finite, for the caller to name."""
        batch = torch.as_tensor(batch)
        if not batch.is_floating_point() or batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise UserError(self._not_input(batch, batch=True))
        out = self.encoder(batch.to(self.device, torch.float32)).float().cpu().numpy()
        return unit_rows(out, np.float32, tolerance=UNIT_TOLERANCE)

    def embed(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """The unit-length float32 embeddings of ``images``: (d,) for one image (a path, a PIL image, an array or a
        (C, H, W) tensor), (N, d) for a list of them or a batch tensor (N, C, H, W). See :meth:`prepare` for what
        each kind of input means; anything that is none of them, or a file that is no image, is a one-line
        :class:`UserError`."""
        single = not isinstance(images, list | tuple)
        if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
            batch = torch.as_tensor(images)
            if batch.is_floating_point() and len(batch):  # prepared already: no image-by-image pass
                parts = [self.embed_tensor(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
                return np.concatenate(parts)
            items, single = list(images), False  # pixels, image by image (or a dtype prepare names)
        else:
            items = [images] if single else list(images)
        if not items:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        parts = [
            self.embed_tensor(torch.stack([self.prepare(image) for image in items[start : start + batch_size]]))
            for start in range(0, len(items), batch_size)
        ]
        embeddings = np.concatenate(parts)
        return embeddings[0] if single else embeddings

    __call__ = embed

    def embed_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 256) -> EmbeddedFiles:
        """Embed image files in batches, as :meth:`embed` does; a file that cannot be decoded is skipped and listed
        in ``failed`` with why (a gallery or a query folder with a broken file is still searched)."""
        kept: list[Path] = []
        failed: list[tuple[Path, str]] = []
        parts: list[np.ndarray] = []
        batch: list[Tensor] = []
        for path in paths:
            try:
                batch.append(self.loader(path))
            except DECODE_ERRORS as error:
                failed.append((Path(path), f"{type(error).__name__}: {error}"))
                continue
            kept.append(Path(path))
            if len(batch) == batch_size:
                parts.append(self.embed_tensor(torch.stack(batch)))
                batch.clear()
        if batch:
            parts.append(self.embed_tensor(torch.stack(batch)))
        embeddings = np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), dtype=np.float32)
        return EmbeddedFiles(paths=kept, embeddings=embeddings, failed=failed)


def weights_digest(encoder: nn.Module, preprocessing: Mapping[str, Any]) -> str:
    """The sha256 (hex) of ``encoder``'s state dict (every tensor's name, dtype, shape and bytes, in name order: the
    same weights give the same digest on any device, whatever order the module registered them in) and of
    ``preprocessing`` (as sorted JSON). About 1 s per GB of weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # as bytes, whatever the dtype (numpy has no bfloat16); reshape(-1): a 0-d buffer has no bytes view of its own
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(dict(preprocessing), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """The inference model of a training checkpoint (``.ckpt``, built from its backbone and head configs alone: no
    data is read) or of a model folder written by ``simlearn-export format=hf`` (the folder or any file in it), on
    ``device``: the same object either way, so every command that takes ``ckpt_path=`` takes both. A path that is
    neither is one :class:`UserError`."""
    # the readers build this module's class, so they are imported here, not at the top (a cycle otherwise)
    from simlearn.checkpoints import checkpoint_model, load_checkpoint
    from simlearn.inference.model_folder import folder_of, read_model_folder

    folder = folder_of(path)
    if folder is not None:
        return read_model_folder(folder, device)
    return checkpoint_model(load_checkpoint(path), path, device)


@torch.no_grad()
def embed(
    encoder: nn.Module, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str | None = None
) -> EmbeddingSet:
    """Embeddings and label fields of every batch (``{"image", "index", <fields>}``), in order, in eval mode."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for batch in batches:
        parts["embeddings"].append(encoder(batch["image"].to(device)).float().cpu())
        for key, value in batch.items():
            if key != "image":
                parts[key].append(value.cpu())
    encoder.train(was_training)
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
    embeddings, index = arrays.pop("embeddings"), arrays.pop("index")
    return EmbeddingSet(embeddings=embeddings, fields=arrays, index=index)


def pick_device(device: str | None) -> torch.device:
    """``auto``/None: the GPU when PyTorch sees one, else the CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asks for a GPU, but PyTorch sees none; use device=auto or device=cpu.")
    return torch.device(device)
