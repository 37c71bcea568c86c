"""Turning a composed config into objects: model, datamodule, callbacks, loggers, trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simlearn.data.in_memory import InMemoryImageDataModule
from simlearn.errors import UserError
from simlearn.evaluation.artifacts import write_evaluation, write_metrics
from simlearn.models import EmbeddingModule, Encoder

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

_INT = (int,)
_NUMBER = (int, float)
#: Type checks for scalars that libraries would otherwise reject deep inside, with an unreadable traceback.
EXPECTED_TYPES: dict[str, tuple[type, ...]] = {
    "seed": _INT,
    "head.out_dim": _INT,
    "head.hidden_dim": _INT,
    "trainer.max_epochs": _INT,
    "trainer.min_epochs": _INT,
    "trainer.max_steps": _INT,
    "trainer.check_val_every_n_epoch": _INT,
    "trainer.log_every_n_steps": _INT,
    "trainer.limit_train_batches": _NUMBER,
    "trainer.gradient_clip_val": _NUMBER,
    "data.batch_size": _INT,
    "data.eval_batch_size": _INT,
    "data.num_workers": _INT,
    "data.m_per_class": _INT,
    "data.max_train": _INT,
    "data.max_val": _INT,
    "data.max_test": _INT,
    "data.val_fraction": _NUMBER,
    "data.test_fraction": _NUMBER,
    "data.image_size": _INT,
    "data.channels": _INT,
    "data.num_classes": _INT,
    "optimizer.lr": _NUMBER,
    "optimizer.weight_decay": _NUMBER,
    "evaluation.chunk_size": _INT,
}


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type before anything is built, naming the key and the expected type."""
    for key, types in EXPECTED_TYPES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or (isinstance(value, types) and not isinstance(value, bool)):
            continue
        kind = "an integer" if types == _INT else "a number"
        # a value the key would really take (a learning rate of 10 is no example to follow)
        example = {
            "seed": 42,
            "head.out_dim": 64,
            "head.hidden_dim": 256,
            "trainer.min_epochs": 1,
            "trainer.max_steps": 1000,
            "trainer.check_val_every_n_epoch": 1,
            "trainer.log_every_n_steps": 10,
            "trainer.limit_train_batches": 0.25,
            "trainer.gradient_clip_val": 1.0,
            "data.batch_size": 64,
            "data.eval_batch_size": 1024,
            "data.num_workers": 4,
            "data.m_per_class": 4,
            "data.max_train": 1000,
            "data.max_val": 1000,
            "data.max_test": 1000,
            "data.val_fraction": 0.1,
            "data.test_fraction": 0.1,
            "data.image_size": 28,
            "data.channels": 3,
            "optimizer.lr": 0.001,
            "optimizer.weight_decay": 0.0001,
            "evaluation.chunk_size": 1024,
        }.get(key, 10)
        raise UserError(f"{key} must be {kind}, got {value!r} ({type(value).__name__}); e.g. {key}={example}.")
    ks = OmegaConf.select(cfg, "evaluation.ks", default=None)
    if ks is not None and (not OmegaConf.is_list(ks) or not ks or not all(isinstance(k, int) and k >= 1 for k in ks)):
        raise UserError(
            f"evaluation.ks must be a non-empty list of integers ≥ 1, got {ks}; e.g. evaluation.ks=[1,5,10]."
        )


def build_datamodule(data_cfg: DictConfig) -> InMemoryImageDataModule:
    """Instantiate and set up the data now, so that data errors appear before any training starts."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: InMemoryImageDataModule) -> EmbeddingModule:
    """Encoder (backbone + head), loss and optimiser from the config, checked against the data's label fields."""
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.out_features)
    model = EmbeddingModule(
        encoder=Encoder(backbone, head),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        evaluator=instantiate(cfg.evaluation),
        compile=bool(cfg.get("compile", False)),
        channels_last=bool(cfg.get("channels_last", False)),
        config={key: resolved(cfg, key) for key in MODEL_KEYS if key in cfg},
    )
    if hasattr(datamodule, "preprocessing"):
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


def run_reports(
    cfg: DictConfig, trainer: pl.Trainer, model: EmbeddingModule, datamodule: Any, output_dir: Any
) -> dict[str, float]:
    """Run the configured ``reports`` (analyses after testing); return their metrics, prefixed ``test/``."""
    metrics: dict[str, float] = {}
    for name, report_cfg in (cfg.get("reports") or {}).items():
        if report_cfg is None:
            continue
        report = instantiate(report_cfg)
        values = report(trainer=trainer, model=model, datamodule=datamodule, output_dir=output_dir) or {}
        metrics.update({f"test/{name}/{key}": float(value) for key, value in values.items()})
    return metrics


def write_test_outputs(
    cfg: DictConfig,
    trainer: pl.Trainer,
    model: EmbeddingModule,
    datamodule: Any,
    output_dir: Any,
    metrics: Mapping[str, float],
) -> dict[str, float]:
    """On rank 0 after testing: the test split's files, then the reports (their metrics added), then metrics.json."""
    result = model.results["test"]
    write_evaluation(output_dir, result.embeddings, result.fields, datamodule.label_field, datamodule.class_names)
    metrics = {**metrics, **run_reports(cfg, trainer, model, datamodule, output_dir)}
    write_metrics(output_dir, metrics)
    return metrics
