"""Train and evaluate an embedding model: `python train.py [group=option ...] [key=value ...]`."""

from simlearn.cli.train import main

if __name__ == "__main__":
    main()
