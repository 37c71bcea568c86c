"""Every option of every config group composes, and the objects it describes can be built."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from simlearn.build import build_list, build_trainer, check_config
from simlearn.config import compose_config, config_dir
from simlearn.errors import UserError
from simlearn.losses import MultiTaskLoss
from simlearn.models import Encoder

from .helpers import REPO

#: Groups of configs/ that are plumbing, not a choice the README documents.
INTERNAL_GROUPS = {"paths", "hydra"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def documented_groups() -> dict[str, list[str]]:
    """The README's "Compose a run" table: each group and the options its second column names (backticked)."""
    section = REPO.joinpath("README.md").read_text().split("### Compose a run", 1)[1].split("\n#", 1)[0]
    groups = {}
    for row in re.findall(r"^\| `([a-z_]+)` \| (.+?) \|", section, re.M):
        group, cell = row
        groups[group] = sorted(name for name in re.findall(r"`([^`]+)`", cell) if re.fullmatch(r"[a-z0-9_]+", name))
    return groups


def test_config_dir_mirrors_the_documented_groups():
    documented = documented_groups()
    folders = {p.name for p in config_dir().iterdir() if p.is_dir()} - INTERNAL_GROUPS
    assert set(documented) == folders, "the README's Compose-a-run table and the folders of configs/ differ"
    for group, names in documented.items():
        assert names == options(group), f"README options of {group} differ from configs/{group}/*.yaml"


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


@pytest.mark.parametrize("path", sorted(config_dir().rglob("*.yaml")), ids=lambda p: str(p.relative_to(config_dir())))
def test_every_target_of_every_config_resolves(path: Path):
    targets = [t for t in _targets(yaml.safe_load(path.read_text())) if "${" not in t]
    for target in targets:
        assert callable(get_object(target)), f"{path.name}: _target_ {target} is not a class or function"


@pytest.mark.parametrize("option", options("augment"))
def test_every_augment_option_builds_its_transforms(tmp_path: Path, option: str):
    overrides = ["data=image_folder", "data.root=.", "data.image_size=32", f"augment={option}"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    transforms = instantiate(OmegaConf.to_container(cfg.augment, resolve=True))["transforms"] or []
    written = yaml.safe_load((config_dir() / "augment" / f"{option}.yaml").read_text())["transforms"] or []
    assert len(transforms) == len(written) and all(callable(t) for t in transforms)


@pytest.mark.parametrize("option", options("hparams_search"))
def test_every_hparams_search_searches_keys_of_the_config(option: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[f"hparams_search={option}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"hparams_search={option} searches nothing"
    for key in params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{option}: {key} is not a config key"


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
    if group != "logger":  # building loggers is covered in test_loggers / the training tests
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
