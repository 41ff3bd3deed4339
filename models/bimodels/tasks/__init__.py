"""Learning tasks: one file per task, each registering itself (see base.Task)."""

from . import (  # noqa: F401,E402  # isort: skip  (registration order)
    image_classification,
    point_cloud_classification,
    language_understanding,
    keyword_spotting,
    object_detection,
    part_segmentation,
)
from .base import SCALES, Split, Task, TaskData, TaskError, TrainConfig, get_task, list_tasks, register_task

__all__ = [
    "SCALES",
    "Split",
    "Task",
    "TaskData",
    "TaskError",
    "TrainConfig",
    "get_task",
    "list_tasks",
    "register_task",
]
