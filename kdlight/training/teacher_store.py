"""Trained teachers by data and size, so a sweep can name its teacher instead of a run folder.

    kdlight-train -m stage=teacher model@teacher=llama-m,llama-l            # 1. train teachers
    kdlight-train -m method=fkd,rkd model@teacher=llama-m,llama-l teacher_from_store=true   # 2. distil

A finished `stage=teacher` run publishes its model to `<teachers_dir>/<data>/<teacher name>`
(the latest one wins); `teacher_from_store=true` makes a student run load its teacher from there.
Publishing copies into a temporary folder and swaps it in, so a reader never sees half a model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def stored_teacher(teachers_dir: str | Path, data: str, teacher: str) -> Path:
    return Path(teachers_dir) / data / teacher


def publish_teacher(model_dir: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    if destination.exists():
        os.rename(destination, retired)
    os.rename(staging, destination)
    shutil.rmtree(retired, ignore_errors=True)
    return destination


def require_stored_teacher(path: Path, data: str, teacher: str) -> Path:
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no stored teacher '{teacher}' for data '{data}' at {path}: train it first with "
                                f"`kdlight-train stage=teacher model@teacher={teacher} data={data}`")
    return path
