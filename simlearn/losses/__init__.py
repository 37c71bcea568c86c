"""Tasks (one objective on one label field, on the image, or on views of the image) and their weighted combination."""

from simlearn.losses.hashing import HashCenterTask
from simlearn.losses.pairs import PairTask, pair_indices
from simlearn.losses.reconstruction import ReconstructionTask
from simlearn.losses.self_supervised import MomentumTeacherTask, ViewContrastTask, ViewTask
from simlearn.losses.tasks import MetricTask, MultiTaskLoss, RegressionTask, Task

__all__ = [
    "HashCenterTask",
    "MetricTask",
    "MomentumTeacherTask",
    "MultiTaskLoss",
    "PairTask",
    "ReconstructionTask",
    "RegressionTask",
    "Task",
    "ViewContrastTask",
    "ViewTask",
    "pair_indices",
]
