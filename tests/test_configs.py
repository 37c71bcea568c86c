"""Every option of every config group composes, and the objects it describes can be built."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Trainer

from simlearn.build import build_list, build_trainer, check_config
from simlearn.config import compose_config, config_dir
from simlearn.errors import UserError
from simlearn.losses import MultiTaskLoss
from simlearn.models import Encoder

GROUPS = [
    "data",
    "backbone",
    "head",
    "loss",
    "trainer",
    "logger",
    "callbacks",
    "evaluation",
    "experiment",
    "paths",
    "hydra",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_config_dir_mirrors_the_documented_groups():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ has no options"


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ["data", "backbone", "head", "loss", "trainer", "logger", "callbacks", "experiment"]
        for o in options(g)
    ],
)
def test_every_group_option_composes_and_builds(tmp_path: Path, group: str, option: str):
    cfg = compose_config([f"{group}={option}"], output_dir=tmp_path)
    if cfg.backbone.get("pretrained"):  # recipes that start from pretrained weights: random ones here, no download
        cfg.backbone.pretrained = False
    check_config(cfg)
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.out_features)
    if cfg.head.get("out_dim", 0) is None:  # head=identity: as build_model, losses read the backbone's size
        cfg.head.out_dim = head.out_dim
    if "num_classes" in cfg.data and cfg.data.num_classes is None:
        # build_model sizes classifier losses from the training classes once the data is set up (not read here)
        cfg.data.num_classes = 3
    assert isinstance(MultiTaskLoss.wrap(instantiate(cfg.loss)), MultiTaskLoss)
    assert Encoder(backbone, head).embedding_dim == cfg.head.out_dim
    assert datamodule.label_field == cfg.data.label_field
    if group != "logger":  # building loggers is covered in test_wandb / the training tests
        build_list(cfg.logger)
    callbacks = build_list(cfg.callbacks)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(UserError, match="asks for a GPU, but PyTorch sees none"):
            build_trainer(cfg, callbacks, [])
        return
    assert isinstance(build_trainer(cfg, callbacks, []), Trainer)


def test_eval_config_composes_with_and_without_data(tmp_path):
    cfg = compose_config(["ckpt_path=x.ckpt"], config_name="eval", output_dir=tmp_path)
    assert not cfg.get("data")
    cfg = compose_config(["ckpt_path=x.ckpt", "data=mnist"], config_name="eval", output_dir=tmp_path)
    assert cfg.data.image_size == 28


def test_backbone_input_follows_the_data_config(tmp_path):
    cfg = compose_config(["data=mnist"], output_dir=tmp_path)
    assert (cfg.backbone.in_channels, cfg.backbone.image_size) == (1, 28)
    cfg = compose_config([], output_dir=tmp_path)
    assert (cfg.backbone.in_channels, cfg.backbone.image_size) == (1, 8)


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs must be an integer"),
        ("head.out_dim=2.5", "head.out_dim must be an integer"),
        ("optimizer.lr=fast", "optimizer.lr must be a number"),
        ("evaluation.ks=[0,5]", "evaluation.ks must be a non-empty list"),
    ],
)
def test_wrong_types_are_named(tmp_path, override, message):
    cfg = compose_config([override], output_dir=tmp_path)
    with pytest.raises(UserError, match=message):
        check_config(cfg)
