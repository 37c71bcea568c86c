"""Rebuilding what a checkpoint holds: its config, its model and data (``simlearn-eval``), its inference model and
data (``simlearn-embed``), or just its inference model (:func:`checkpoint_model`: the encoder and the image
preprocessing it expects, for ``simlearn.inference.load_model``; no data needed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from simlearn.build import (
    CROP_KEYS,
    FETCH_KEYS,
    build_datamodule,
    build_encoder,
    build_model,
    check_config,
    fill_preprocessing,
    resolved,
)
from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.models import EmbeddingModule
from simlearn.models.backbones import load_weights

log = logging.getLogger(__name__)

__all__ = [
    "RestoredRun",
    "checkpoint_config",
    "check_channels",
    "checkpoint_model",
    "load_checkpoint",
    "preprocessing_of",
    "restore",
]


def load_checkpoint(path: str | Path, option: str = "ckpt_path") -> dict[str, Any]:
    """A simlearn checkpoint: Lightning's dict plus the ``simlearn_config`` its model was built from. ``option``:
    the setting that named it, in the messages (``ckpt_path``, ``init_from``)."""
    path = Path(path)
    if not path.is_file():
        folder = " or a model folder written by simlearn-export format=hf" if option == "ckpt_path" else ""
        raise UserError(
            f"{option}={str(path)!r} is not a file: it does not exist; give a .ckpt written by training{folder}."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{option}={str(path)!r} is not a readable PyTorch checkpoint ({error}).") from error
    if not isinstance(checkpoint, dict) or "simlearn_config" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(
            f"{option}={str(path)!r} was not written by simlearn (no 'simlearn_config' in it); "
            f"use a checkpoint from a run's checkpoints/ folder, or a model folder of simlearn-export format=hf."
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any], cfg: DictConfig | None = None) -> DictConfig:
    """The checkpoint's build config with the command line's changes: ``data=NAME`` (a config with ``_target_``)
    replaces its data config, ``+data.KEY=VALUE`` edits it; ``evaluation`` and ``trainer`` replace its own."""
    run_cfg = OmegaConf.create(checkpoint["simlearn_config"])
    if cfg is None:
        return run_cfg
    with open_dict(run_cfg):
        data = cfg.get("data")
        if data and "_target_" in data:
            # data keys left null for the model take the preprocessing it was trained with (before resolving them)
            fill_preprocessing(cfg, checkpoint["simlearn_config"].get("preprocessing"))
            run_cfg.data = resolved(cfg, "data")
            if cfg.get("evaluation") is None and "evaluation" in run_cfg and "label_field" in run_cfg.evaluation:
                run_cfg.evaluation.label_field = run_cfg.data.label_field
        elif data:
            run_cfg.data = OmegaConf.merge(run_cfg.data, resolved(cfg, "data"))
        for key in ("evaluation", "trainer"):
            if cfg.get(key) is not None:
                run_cfg[key] = resolved(cfg, key)
    return run_cfg


@dataclass
class RestoredRun:
    """What a checkpoint's run is rebuilt into: the data it is evaluated or embedded on, the config that built them,
    and either its trained model (weights loaded, with its loss: ``simlearn-eval``) or, when only that was asked
    for, its inference model (``simlearn-embed``)."""

    checkpoint: dict[str, Any]
    config: DictConfig
    datamodule: Any
    model: EmbeddingModule | None = None
    inference: InferenceModel | None = None


def restore(cfg: DictConfig, with_loss: bool = True) -> RestoredRun:
    """Rebuild the model of ``cfg.ckpt_path`` and its data (the checkpoint's, or as changed by ``cfg``, see
    :func:`checkpoint_config`), seeded by ``cfg.seed`` like training; the data is set up, the weights loaded.

    ``with_loss=False`` builds the inference model alone (no loss, so any data with images will do, whatever its
    label fields: ``simlearn-embed``): ``inference`` is set instead of ``model``.
    """
    from simlearn.inference.model_folder import folder_of

    if folder_of(cfg.ckpt_path) is not None:
        return restore_folder(cfg, with_loss)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = checkpoint_config(checkpoint, cfg)
    check_config(run_cfg)
    check_channels(run_cfg.get("data"), run_cfg.get("preprocessing"), cfg.ckpt_path)
    for key, off in FETCH_KEYS.items():  # the checkpoint's weights replace them: never fetch
        if key in run_cfg.backbone:
            run_cfg.backbone[key] = off
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run_cfg.data)
    restored = RestoredRun(checkpoint=checkpoint, config=run_cfg, datamodule=datamodule)
    if not with_loss:
        restored.inference = checkpoint_model(checkpoint, cfg.ckpt_path)
        return restored
    # evaluated, not trained: a class-split checkpoint's classifier (sized for its training classes) tests any data
    restored.model = build_model(run_cfg, datamodule, check_training=False)
    restored.model.load_state_dict(checkpoint["state_dict"])
    return restored


def check_channels(data: Any, preprocessing: Any, ckpt_path: Any) -> None:
    """The data's images have the channels the model reads (its stored preprocessing), else one :class:`UserError`
    line naming ``data.channels``, before anything is built (the first batch would end in conv2d's RuntimeError)."""
    given = data.get("channels") if OmegaConf.is_dict(data) or isinstance(data, dict) else None
    expected = (preprocessing or {}).get("channels")
    if given is None or expected is None or int(given) == int(expected):
        return
    kind = {1: "grey (1 channel)", 3: "RGB (3 channels)"}
    raise UserError(
        f"data.channels={given} but the model of ckpt_path={str(ckpt_path)!r} reads "
        f"{kind.get(int(expected), f'{expected}-channel')} images; give data.channels={expected} (image files are "
        f"converted as they are read), or data and a model of the same kind."
    )


def restore_folder(cfg: DictConfig, with_loss: bool = False) -> RestoredRun:
    """:func:`restore` of a model folder (``simlearn-export format=hf``): its encoder and the data ``cfg`` names,
    whose keys left null take the folder's preprocessing. The folder holds neither the loss nor the data it was
    trained on, so ``with_loss`` and a ``cfg`` without ``data=`` are one :class:`UserError` each."""
    from simlearn.inference.model_folder import folder_of, read_model_folder

    folder = folder_of(cfg.ckpt_path)
    what = f"ckpt_path={str(cfg.ckpt_path)!r} is a model folder (simlearn-export format=hf)"
    if with_loss:
        raise UserError(
            f"{what}: it holds the encoder, not the loss and data that evaluating needs; give the training "
            f"checkpoint (.ckpt) it was exported from."
        )
    data = cfg.get("data")
    if not OmegaConf.is_dict(data) or "_target_" not in data:
        raise UserError(
            f"{what}: it holds the encoder, not the data it was trained on; name the data to embed (e.g. "
            f"simlearn-embed data=image_folder data.root=DIR), serve a gallery=FOLDER, npz or LanceDB database, or "
            f"give the training checkpoint (.ckpt)."
        )
    model = read_model_folder(folder)
    fill_preprocessing(cfg, model.preprocessing)  # data keys left null: as the model expects its images
    run_cfg = OmegaConf.merge(model.config, {"data": resolved(cfg, "data")})
    check_config(run_cfg)
    check_channels(run_cfg.get("data"), model.preprocessing, cfg.ckpt_path)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run_cfg.data)
    return RestoredRun(checkpoint={}, config=run_cfg, datamodule=datamodule, inference=model)


def checkpoint_model(
    checkpoint: dict[str, Any], path: str | Path, device: str | torch.device = "cpu"
) -> InferenceModel:
    """The inference model of a loaded checkpoint: its encoder (eval mode, its weights; pretrained backbone weights
    are not fetched, the checkpoint's replace them), the preprocessing it expects and its config."""
    config = checkpoint_config(checkpoint)
    for key in ("backbone", "head"):
        if key not in config:
            raise UserError(f"ckpt_path={str(path)!r} has no {key} config; it was written by an older simlearn.")
    backbone_cfg = OmegaConf.to_container(config.backbone, resolve=True)
    for key, off in FETCH_KEYS.items():
        if key in backbone_cfg:
            backbone_cfg[key] = off
    encoder = build_encoder({"backbone": backbone_cfg, "head": config.head})
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    load_weights(
        encoder,
        state,
        f"ckpt_path={str(path)!r}: its encoder weights",
        "its own config (the file was changed after training); use a checkpoint as its run wrote it",
    )
    return InferenceModel(encoder, preprocessing_of(config, path), config, path, "checkpoint", path, device)


def preprocessing_of(config: DictConfig, path: str | Path = "checkpoint") -> dict[str, Any]:
    """The image preprocessing a checkpoint's model expects, as training stored it (``preprocessing``)."""
    stored = config.get("preprocessing")
    if stored:
        prep = OmegaConf.to_container(stored, resolve=True) if OmegaConf.is_config(stored) else dict(stored)
        # crop_pct and interpolation where training recorded them (older checkpoints: the full square, bilinear)
        return {key: prep[key] for key in ("image_size", "channels", "mean", "std", *CROP_KEYS) if key in prep}
    raise UserError(
        f"{path} does not say how to prepare images for its model (no 'preprocessing' in it: it was written before "
        f"simlearn stored it). Train the model again with this version of simlearn."
    )
