"""``simlearn-organise ckpt_path=PATH gallery=FOLDER_OR_NPZ [k=10]``: clusters, near-duplicates and outliers of a
gallery."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("organise")
def main(cfg: DictConfig) -> None:
    from simlearn.organise.command import organise  # after the config checks: see hydra_command

    organise(cfg)


if __name__ == "__main__":
    main()
