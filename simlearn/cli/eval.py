"""``simlearn-eval ckpt_path=PATH [data=NAME ...]``: test a checkpoint, writing the same files as training."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("eval")
def main(cfg: DictConfig) -> None:
    from simlearn.eval import evaluate  # after the config checks: see hydra_command

    evaluate(cfg)


if __name__ == "__main__":
    main()
