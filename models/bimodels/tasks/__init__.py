"""Learning tasks: one file per task, each registering itself (see base.Task)."""
from .base import SCALES, Split, Task, TaskData, TaskError, TrainConfig, get_task, list_tasks, register_task
from . import (image_classification, point_cloud_classification, language_understanding,  # noqa: F401,E402
               keyword_spotting, object_detection, part_segmentation)

__all__ = ["SCALES", "Split", "Task", "TaskData", "TaskError", "TrainConfig", "get_task", "list_tasks",
           "register_task"]
