"""Where the Hydra configs live, and composing them outside a command line (tests, notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict


def config_dir() -> Path:
    """The configs/ folder: packaged inside a wheel, or at the repository root for an editable install."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """Compose a config as the command line would; ``output_dir`` stands in for Hydra's run dir."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=config_name):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg
