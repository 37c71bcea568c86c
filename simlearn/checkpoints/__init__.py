"""Checkpoints under one name: writing them during training (:mod:`.saving`) and rebuilding what they hold
(:mod:`.restoring`)."""

from simlearn.checkpoints.restoring import (
    RestoredRun,
    checkpoint_config,
    checkpoint_model,
    load_checkpoint,
    preprocessing_of,
    restore,
)
from simlearn.checkpoints.saving import AtomicCheckpointIO, LatestBestCheckpoint, RunCheckpoint, relocate

__all__ = [
    "AtomicCheckpointIO",
    "LatestBestCheckpoint",
    "RestoredRun",
    "RunCheckpoint",
    "checkpoint_config",
    "checkpoint_model",
    "load_checkpoint",
    "preprocessing_of",
    "relocate",
    "restore",
]
