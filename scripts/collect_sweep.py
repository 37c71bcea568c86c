"""Tabulate a Hydra multirun dir: `python scripts/collect_sweep.py outputs/train/multiruns/<date> [--metric KEY]`."""

from simlearn.cli.collect import main

if __name__ == "__main__":
    main()
