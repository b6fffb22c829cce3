"""Task families: each loads its splits as `Example`s and names the scorer of its predictions."""

from kdlight.tasks.base import SPLITS, Task

__all__ = ["SPLITS", "Task"]
