"""Learning tasks: one file per task, each registering itself (see base.Task)."""

from . import (  # noqa: F401,E402
    image_classification,
    keyword_spotting,
    language_understanding,
    object_detection,
    part_segmentation,
    point_cloud_classification,
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
