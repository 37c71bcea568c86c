"""Tasks (one objective on one label field, or on the image) and their weighted combination."""

from simlearn.losses.hashing import HashCenterTask
from simlearn.losses.pairs import PairTask, pair_indices
from simlearn.losses.reconstruction import ReconstructionTask
from simlearn.losses.tasks import MetricTask, MultiTaskLoss, RegressionTask, Task

__all__ = [
    "HashCenterTask",
    "MetricTask",
    "MultiTaskLoss",
    "PairTask",
    "ReconstructionTask",
    "RegressionTask",
    "Task",
    "pair_indices",
]
