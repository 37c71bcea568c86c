"""Checkpoints under one name: writing them during training (:mod:`.saving`) and rebuilding what they hold
(:mod:`.restoring`)."""

from simlearn.checkpoints.restoring import (
    LoadedEncoder,
    Restored,
    checkpoint_config,
    encoder_of,
    load_checkpoint,
    load_encoder,
    preprocessing_of,
    restore,
)
from simlearn.checkpoints.saving import AtomicCheckpointIO, LatestBestCheckpoint, RunCheckpoint, relocate

__all__ = [
    "AtomicCheckpointIO",
    "LatestBestCheckpoint",
    "LoadedEncoder",
    "Restored",
    "RunCheckpoint",
    "checkpoint_config",
    "encoder_of",
    "load_checkpoint",
    "load_encoder",
    "preprocessing_of",
    "relocate",
    "restore",
]
