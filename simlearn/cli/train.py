"""``python train.py`` / ``simlearn-train``: train, test the best checkpoint, write the run dir."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("train", claims_run_dir=False)
def main(cfg: DictConfig) -> float | None:
    from simlearn.train import optimized_value, train  # after the config checks: see hydra_command

    return optimized_value(cfg, train(cfg))  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
