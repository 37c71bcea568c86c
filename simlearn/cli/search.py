"""``simlearn-search ckpt_path=PATH query=IMAGE_OR_FOLDER gallery=FOLDER_OR_NPZ``: reverse image search."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("search")
def main(cfg: DictConfig) -> None:
    from simlearn.inference.search import search  # after the config checks: see hydra_command

    search(cfg)


if __name__ == "__main__":
    main()
