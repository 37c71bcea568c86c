"""Tasks (one objective on one label field) and their weighted combination."""

from simlearn.losses.tasks import MetricTask, MultiTaskLoss, RegressionTask, Task

__all__ = ["MetricTask", "MultiTaskLoss", "RegressionTask", "Task"]
