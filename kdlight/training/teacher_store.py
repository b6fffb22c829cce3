"""Trained teachers by data and size, so a sweep can name its teacher instead of a run folder.

    kdlight-train -m stage=teacher model@teacher=llama-m,llama-l            # 1. train teachers
    kdlight-train -m method=fkd,rkd model@teacher=llama-m,llama-l teacher_from_store=true   # 2. distil

A finished `stage=teacher` run publishes its model to `<teachers_dir>/<data>/<teacher name>`
(the latest one wins); `teacher_from_store=true` makes a student run load its teacher from there.
Publishing copies into a staging folder and swaps it in (`kdlight.io.publish_dir`), so a reader
never sees half a model.
"""

from __future__ import annotations

from pathlib import Path

from kdlight.io import publish_dir


def stored_teacher(teachers_dir: str | Path, data: str, teacher: str) -> Path:
    return Path(teachers_dir) / data / teacher


def publish_teacher(model_dir: Path, destination: Path) -> Path:
    return publish_dir(model_dir, destination)


def require_stored_teacher(path: Path, data: str, teacher: str) -> Path:
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no stored teacher '{teacher}' for data '{data}' at {path}: train it first with "
                                f"`kdlight-train stage=teacher model@teacher={teacher} data={data}`")
    return path
