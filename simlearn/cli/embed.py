"""``simlearn-embed ckpt_path=PATH [data=NAME ...]``: embed a dataset's splits into npz/parquet files."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command


@hydra_command("embed")
def main(cfg: DictConfig) -> None:
    from simlearn.inference.embedding_files import embed_dataset  # after the config checks: see hydra_command

    embed_dataset(cfg)


if __name__ == "__main__":
    main()
