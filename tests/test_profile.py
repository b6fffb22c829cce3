"""`kdlight-profile`: one row per model with exact parameter counts and FLOPs, a batch search that
follows its memory cap, and clear errors for bad settings. Timings are only checked to be
positive and finite: which model is faster is never asserted (shared, noisy machines)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from kdlight.cli.profile import build_profile, profile
from kdlight.cli.train import CONFIG_DIR
from kdlight.data.tokenizer import load_tokenizer
from kdlight.models.build import build_model, count_parameters
from kdlight.run.profile import GB

# Small and quick, on the project's generated data: 4 prompts, 4 new tokens, batches up to 4.
SMALL = ["model@teacher=llama-s", "model@student=llama-xs", "prompts=4", "batch_size=2", "max_batch_size=4",
         "repeats=1", "warmup=0", "threads=1", "data.decoding.max_new_tokens=4"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, str]:
    """`kdlight-profile` run once as a user runs it: its folder and what it printed."""
    out = tmp_path_factory.mktemp("profile")
    done = subprocess.run([sys.executable, "-m", "kdlight.cli.profile", *SMALL, f"hydra.run.dir={out}"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "KDLIGHT_CACHE": str(tmp_path_factory.getbasetemp() / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def compose_profile(overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("profile", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.paths.cache_dir = str(out.parent / "cache")
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_cli_writes_one_row_per_model_with_exact_parameters_and_flops(cli_run):
    out, printed = cli_run
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert [(r["role"], r["model"]) for r in rows] == [("teacher", "llama-s"), ("student", "llama-xs")]
    table = [line for line in (out / "profile.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[:2] for line in table[1:]] == [["| teacher", "llama-s"], ["| student", "llama-xs"]]
    assert all(line in printed for line in table)  # the same table on stdout
    report = json.loads((out / "profile.json").read_text())
    assert [(r["role"], r["model"]) for r in report["rows"]] == [("teacher", "llama-s"), ("student", "llama-xs")]

    # The parameters of the models the run built: same configs, the run's own tokenizer.
    tokenizer = load_tokenizer(out / "tokenizer")
    cfg = compose_profile(SMALL, out)
    expected = [count_parameters(build_model(instantiate(cfg[role]), tokenizer)) for role in ("teacher", "student")]
    teacher, student = report["rows"]
    assert [teacher["params"], student["params"]] == expected == [int(r["params"]) for r in rows]
    assert teacher["params"] > student["params"] and teacher["flops"] > student["flops"] > 0
    assert student["params_x"] == pytest.approx(student["params"] / teacher["params"]) and teacher["flops_x"] == 1
    for row in report["rows"]:
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("forward_ms", "generate_ms", "examples_per_min"))
        assert 0 < row["tokens"] <= 4 and row["batch"] == 4  # the default cap (8 GB) fits every batch tried
        memory = report["details"][row["role"]]["memory_bytes_by_batch"]
        assert list(memory) == ["1", "2", "4"] and memory["1"] < memory["2"] < memory["4"]
        assert row["peak_mb"] == pytest.approx(memory["4"] / 10**6)


def test_batch_search_follows_the_memory_cap(cli_run, tmp_path):
    out, _ = cli_run
    memory = {role: {int(b): m for b, m in by_batch["memory_bytes_by_batch"].items()}
              for role, by_batch in json.loads((out / "profile.json").read_text())["details"].items()}
    cap = (memory["teacher"][2] + memory["teacher"][4]) / 2  # the teacher fits 2 examples, not 4
    cfg = compose_profile([*SMALL, f"tokenizer.path={out / 'tokenizer'}", f"memory_cap_gb={cap / GB}"], tmp_path)
    rows = {row["role"]: row for row in profile(cfg)}
    assert rows["teacher"]["batch"] == 2
    assert rows["student"]["batch"] == max(b for b, m in memory["student"].items() if m <= cap)
    details = json.loads((tmp_path / "profile.json").read_text())["details"]
    assert details["teacher"]["memory_bytes_by_batch"] == {"1": memory["teacher"][1], "2": memory["teacher"][2],
                                                           "4": memory["teacher"][4]}  # deterministic on CPU

    too_small = min(memory["teacher"][1], memory["student"][1]) / 2 / GB
    cfg = compose_profile([*SMALL, f"tokenizer.path={out / 'tokenizer'}", f"memory_cap_gb={too_small}"], tmp_path)
    with pytest.raises(ValueError, match=r"memory_cap_gb=.*teacher llama-s needs .* to decode one example"):
        profile(cfg)


@pytest.mark.parametrize("override,key", [
    ("device=tpu", "device"), ("memory_cap_gb=0", "memory_cap_gb"), ("memory_cap_gb=-2", "memory_cap_gb"),
    ("max_batch_size=0", "max_batch_size"), ("repeats=0", "repeats"), ("reference=judge", "reference"),
    *([("device=cuda", "device")] if not torch.cuda.is_available() else []),
])
def test_bad_settings_fail_before_any_work_naming_the_key(override, key, tmp_path):
    cfg = compose_profile([override], tmp_path)
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        build_profile(cfg)


def test_a_stored_teacher_has_no_model_to_profile(tmp_path):
    cfg = compose_profile(["model@teacher=stored", "teacher.path=outputs.jsonl"], tmp_path)
    with pytest.raises(TypeError, match="teacher: StoredTeacherSpec 'stored' has no model to profile"):
        build_profile(cfg)
