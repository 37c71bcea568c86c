"""Tabulate a Hydra multirun dir: `python scripts/collect_sweep.py outputs/train/multiruns/<date> [--metric KEY]`."""

from simlearn.sweeps import main

if __name__ == "__main__":
    main()
