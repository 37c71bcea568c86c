"""A split of the checkpoint's own data as the gallery (``gallery=split:test``, the default of ``simlearn-serve``).

The data is rebuilt from the checkpoint's config and embedded as ``simlearn-embed`` does it (the same functions:
:func:`simlearn.inference.embedding_files.rebuild`, :func:`~simlearn.inference.embedding_files.embed_splits`,
:func:`~simlearn.inference.embedding_files.split_arrays`), so the
gallery holds exactly the arrays of that split's ``<split>.npz``: the embeddings, each item's label and label name,
every label field, and the files of data read from files, made a gallery by
:meth:`simlearn.retrieval.Gallery.from_arrays`. It is embedded once and cached in ``cache_dir``, keyed by the checkpoint
file, the split and the split's data: its items and labels, and the content of each item (the pixels of in-memory
data; the name, size and modification time of each file, as the folder cache keys them, for data read from files),
so that a cache is reused while neither the checkpoint nor the data changed. Items of in-memory data (digits, MNIST)
have no files: their pixels are cached beside the embeddings (uint8, read memory-mapped) and served as PNG
(:class:`ItemImages`).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from simlearn.data.in_memory import TensorImageDataset
from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.inference.embedding_files import embed_splits, rebuild, split_arrays
from simlearn.retrieval.cache import (
    CACHE_VERSION,
    atomic_write,
    file_stats,
    fingerprint,
    load_fingerprinted,
    save_fingerprinted,
)
from simlearn.retrieval.codes import encoder_code_bits
from simlearn.retrieval.gallery import Gallery

log = logging.getLogger(__name__)

__all__ = ["SPLIT_PREFIX", "ItemImages", "SplitGallery", "gallery_split", "split_gallery"]

#: ``gallery=split:<name>``: a split of the checkpoint's own data.
SPLIT_PREFIX = "split:"
#: The splits a data module can have (``probe``: the probe classes, where the data has them).
SPLIT_NAMES = ("train", "val", "test", "probe")
#: The split served when no gallery is given.
DEFAULT_SPLIT = "test"
#: Images smaller than this (in pixels, their longer side) are scaled up by a whole factor, nearest neighbour, so
#: that an 8 × 8 digit is a visible 64 × 64 thumbnail with sharp pixels.
MIN_THUMBNAIL_PX = 64


def gallery_split(spec: Any) -> str | None:
    """The split that ``gallery=spec`` names: :data:`DEFAULT_SPLIT` for no gallery, ``<name>`` for
    ``split:<name>``, None for anything else (a folder, an npz or a database); a bad split name is a UserError."""
    if spec is None or not str(spec).strip():
        return DEFAULT_SPLIT
    text = str(spec).strip()
    if not text.startswith(SPLIT_PREFIX):
        return None
    name = text[len(SPLIT_PREFIX) :].strip()
    if name not in SPLIT_NAMES:
        raise UserError(
            f"gallery={text!r} names no split; valid: {', '.join(SPLIT_PREFIX + s for s in SPLIT_NAMES)} (a split of "
            f"the checkpoint's own data), or a folder of images, an npz from simlearn-embed or its LanceDB folder."
        )
    return name


@dataclass
class ItemImages:
    """The pixels of in-memory items, (N, H, W, C) uint8 with C = 1 or 3 (e.g. read memory-mapped from the cache),
    served as PNG files: un-normalised, and scaled up by a whole factor (nearest neighbour) when smaller than
    :data:`MIN_THUMBNAIL_PX`."""

    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def factor(self) -> int:
        height, width = self.pixels.shape[1:3]
        return max(1, math.ceil(MIN_THUMBNAIL_PX / max(height, width, 1)))

    def png(self, i: int) -> bytes:
        """Item ``i`` as a PNG file (grey for one channel, RGB for three)."""
        pixels = np.asarray(self.pixels[i])
        image = Image.fromarray(
            pixels[..., 0] if pixels.shape[-1] == 1 else pixels, "L" if pixels.shape[-1] == 1 else "RGB"
        )
        if self.factor > 1:
            image = image.resize((image.width * self.factor, image.height * self.factor), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


@dataclass
class SplitGallery:
    """A split of the checkpoint's data as a gallery, the images of its in-memory items (None for data read from
    files: the gallery's ``paths`` are its images) and a description for people."""

    gallery: Gallery
    images: ItemImages | None
    description: str


def split_gallery(split: str, model: InferenceModel, cfg: DictConfig) -> SplitGallery:
    """The ``split`` of ``cfg.ckpt_path``'s own data, embedded with ``model`` (read from the cache when neither the
    checkpoint nor the split's data changed, ``cfg.cache``/``cfg.cache_dir``)."""
    ckpt = model.path.resolve()
    data_name = _data_name(model)
    description = f"the {split} split of the checkpoint's data ({data_name})"
    cache_dir = Path(cfg.cache_dir) if cfg.get("cache", True) and cfg.get("cache_dir") else None
    datamodule = _split_data(split, cfg, data_name)  # rebuilt on every start: the cache is keyed by its content
    stat = ckpt.stat()
    key = fingerprint(
        CACHE_VERSION,
        "split",
        split,
        ckpt,
        stat.st_size,
        stat.st_mtime_ns,
        json.dumps(model.preprocessing),
        _data_key(datamodule, split),
    )
    npz = cache_dir / f"split-{fingerprint(ckpt, split)[:16]}.npz" if cache_dir is not None else None
    if npz is not None:
        cached = _read_cache(npz, key, model)
        if cached is not None:
            log.info("gallery embeddings of the %s split reused from %s", split, npz)
            return SplitGallery(cached[0], cached[1], description)
    arrays, pixels = _embed_split(split, model, datamodule, cfg, data_name)
    # simlearn-embed's arrays and ckpt_path (simlearn.inference.embedding_files.write_npz)
    arrays = {**arrays, "ckpt_path": np.array(str(ckpt))}
    if npz is None:  # a gallery of the arrays, a faiss index (if any) built in memory
        gallery = Gallery.from_arrays(arrays, Path(f"{SPLIT_PREFIX}{split}"), model)
        return SplitGallery(gallery, ItemImages(pixels) if pixels is not None else None, description)
    if pixels is not None:  # the pixels first: a cache is used only when its npz is there, which comes last
        atomic_write(_pixels_file(npz), lambda f: np.save(f, pixels))
    save_fingerprinted(npz, key, "gallery of the split", **arrays, cache_pixels=np.array(pixels is not None))
    gallery = Gallery.from_arrays(arrays, npz, model, index_path=npz.with_suffix(".faiss"))
    images = ItemImages(np.load(_pixels_file(npz), mmap_mode="r")) if pixels is not None else None
    return SplitGallery(gallery, images, description)


def _data_name(model: InferenceModel) -> str:
    target = str((model.config.get("data") or {}).get("_target_", "") or "")
    return target.rsplit(".", 1)[-1].removesuffix("DataModule").lower() or "unknown"


def _split_data(split: str, cfg: DictConfig, data_name: str) -> Any:
    """The checkpoint's data module, rebuilt from its config (and ``cfg``'s data overrides), checked to have
    ``split`` with items."""
    datamodule, _ = rebuild(cfg)
    if split not in datamodule.datasets:
        raise UserError(
            f"gallery=split:{split}: the checkpoint's data ({data_name}) has no {split!r} split; it has "
            f"{', '.join(SPLIT_PREFIX + s for s in datamodule.datasets)}."
        )
    if len(datamodule.datasets[split]) == 0:
        raise UserError(
            f"gallery=split:{split}: the {split} split of the checkpoint's data ({data_name}) holds no items; "
            f"serve another split, e.g. gallery=split:{DEFAULT_SPLIT}."
        )
    return datamodule


def _data_key(datamodule: Any, split: str) -> str:
    """What the split's embeddings depend on besides the model: which items it holds, their label fields and class
    names, and each item's content: the files' names, sizes and modification times (the folder cache's key,
    :func:`simlearn.retrieval.cache.file_stats`) for data read from files, else the items' pixels (in-memory data:
    digits, MNIST)."""
    dataset = datamodule.datasets[split]
    index = dataset.indices.cpu()
    # the values the gallery's arrays carry (the dataset's own, split_arrays), not the training labels
    written = datamodule.dataset_fields({name: values.cpu()[index] for name, values in dataset.fields.items()})
    fields = sorted(written.items())
    paths = dataset.paths_of(index.tolist())
    if paths is not None:
        content: Any = file_stats([Path(p) for p in paths])
    elif isinstance(dataset, TensorImageDataset):
        content = dataset.images.cpu()[index].contiguous().numpy()
    else:  # a kind of data this does not know: keyed by its items only (start with cache=false after a change)
        content = type(dataset).__name__
    names = datamodule.dataset_class_names
    return fingerprint(index.numpy(), *(part for pair in fields for part in pair), names, content)


def _embed_split(
    split: str, model: InferenceModel, datamodule: Any, cfg: DictConfig, data_name: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays of ``<split>.npz`` as simlearn-embed writes them and, for in-memory data, the items' pixels."""
    log.info("embedding the %s split of %s (%d items)", split, data_name, len(datamodule.datasets[split]))
    result = embed_splits(model.encoder, datamodule, [split], model.device, cfg.get("batch_size"))[split]
    arrays = split_arrays(result, datamodule, split, encoder_code_bits(model.encoder) is not None)
    dataset = datamodule.datasets[split]
    pixels = None
    if isinstance(dataset, TensorImageDataset):
        images = dataset.images[torch.as_tensor(result.index, dtype=torch.long)].float().cpu() / dataset.scale
        pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arrays, pixels


def _pixels_file(npz: Path) -> Path:
    return npz.with_name(f"{npz.stem}.pixels.npy")


def _read_cache(npz: Path, key: str, model: InferenceModel) -> tuple[Gallery, ItemImages | None] | None:
    """The cached gallery (and pixels) when the cache is of this checkpoint file and this data; None when there is
    none, it is stale or unreadable (it is then embedded again)."""
    arrays = load_fingerprinted(npz, key, None, "cached gallery of the split")
    if arrays is None:
        return None
    has_pixels = "cache_pixels" in arrays and bool(arrays.pop("cache_pixels"))
    try:
        images = ItemImages(np.load(_pixels_file(npz), mmap_mode="r")) if has_pixels else None
        gallery = Gallery.from_arrays(arrays, npz, model, index_path=npz.with_suffix(".faiss"))
    except (OSError, ValueError, UserError) as error:  # e.g. its pixels file removed
        log.warning("the cached gallery %s cannot be read (%s); embedding it again", npz, error)
        return None
    if images is not None and len(images) != len(gallery.embeddings):
        return None
    return gallery, images
