"""``simlearn-export ckpt_path=PATH format=onnx|torchscript``: export a checkpoint's encoder."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command
from simlearn.export import export


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
