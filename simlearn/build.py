"""Turning a composed config into objects: model, datamodule, callbacks, loggers, trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simlearn.data.base import EmbeddingDataModule
from simlearn.errors import UserError
from simlearn.models import EmbeddingModule, Encoder
from simlearn.models.backbones import Backbone
from simlearn.schema import check_config as check_types

#: The parts of a run's config a checkpoint needs to rebuild its model and data.
MODEL_KEYS = (
    "data",
    "backbone",
    "head",
    "loss",
    "optimizer",
    "scheduler",
    "evaluation",
    "reports",
    "seed",
    "compile",
    "channels_last",
)


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type before anything is built, naming the key, the expected type and an example.

    The types come from one schema, the signatures of the classes the config builds (:mod:`simlearn.schema`).
    """
    check_types(cfg)
    ks = OmegaConf.select(cfg, "evaluation.ks", default=None)
    if ks is not None and (not OmegaConf.is_list(ks) or not ks or not all(isinstance(k, int) and k >= 1 for k in ks)):
        raise UserError(
            f"evaluation.ks must be a non-empty list of integers ≥ 1, got {ks}; e.g. evaluation.ks=[1,5,10]."
        )


def build_datamodule(data_cfg: DictConfig) -> EmbeddingDataModule:
    """Instantiate and set up the data now, so that data errors appear before any training starts."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_encoder(cfg: DictConfig | Mapping[str, Any]) -> Encoder:
    """Backbone and projection head from the ``backbone`` and ``head`` configs; the head is sized from the
    backbone's declared ``out_features`` (:class:`~simlearn.models.backbones.Backbone`)."""
    backbone = instantiate(cfg["backbone"])
    if not isinstance(backbone, Backbone):
        raise UserError(
            f"backbone._target_={cfg['backbone'].get('_target_')} built a {type(backbone).__name__}, which is not a "
            f"simlearn.models.backbones.Backbone; subclass it (set out_features, implement forward)."
        )
    return Encoder(backbone, instantiate(cfg["head"], in_features=backbone.out_features))


def build_model(cfg: DictConfig, datamodule: EmbeddingDataModule) -> EmbeddingModule:
    """Encoder (backbone + head), loss and optimiser from the config, checked against the data's label fields."""
    model = EmbeddingModule(
        encoder=build_encoder(cfg),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        evaluator=instantiate(cfg.evaluation),
        compile=bool(cfg.get("compile", False)),
        channels_last=bool(cfg.get("channels_last", False)),
        config={key: resolved(cfg, key) for key in MODEL_KEYS if key in cfg},
    )
    model.config["preprocessing"] = datamodule.preprocessing()
    train = datamodule.datasets["train"]
    model.loss.check_fields({name: train.labels(name) for name in train.fields})
    return model


def resolved(cfg: DictConfig, key: str) -> Any:
    """One key of the config with its interpolations resolved against the whole config."""
    node = cfg[key]
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_list(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> pl.Trainer:
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={cfg.trainer.accelerator} asks for a GPU, but PyTorch sees none "
            f"(torch.cuda.is_available() is False). Use trainer=default (GPU when present, else CPU) or trainer=cpu."
        )
    strategy = str(cfg.trainer.get("strategy") or "")
    if any(word in strategy for word in ("spawn", "fork", "notebook")):
        # these start the ranks as new processes from inside fit(); the embeddings and metrics they compute stay in
        # those processes, so the run would train and test, then fail without results
        raise UserError(
            f"trainer.strategy={strategy} is not supported: its processes keep the test results to themselves. "
            f"Use trainer=ddp (strategy ddp: the launcher starts one process per device, e.g. "
            f"trainer=ddp trainer.accelerator=cpu trainer.devices=2)."
        )
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
