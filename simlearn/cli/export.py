"""``simlearn-export ckpt_path=PATH format=onnx|torchscript``: export a checkpoint's encoder."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    from simlearn.export import export  # after the config checks: see hydra_command

    export(cfg)


if __name__ == "__main__":
    main()
