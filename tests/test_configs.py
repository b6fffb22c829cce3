"""Every config group composes and instantiates; every method runs a couple of steps end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from kdlight.cli.train import CONFIG_DIR, train
from kdlight.data.module import DataSpec
from kdlight.methods import Method
from kdlight.models import Decoding, ModelSpec
from kdlight.tasks import Task
from kdlight.training.teacher import StoredTeacherSpec
from tests.helpers import multirun

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose_cfg(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path.parent / "cache")  # shared by the tests of one session
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
    HydraConfig.instance().set_config(cfg)
    return cfg


MANDATORY = {"hf": ["student.path=/models/x"], "stored": ["student.path=/outputs.jsonl"],
             "jsonl": ["data.task.train_file=a.jsonl", "data.task.eval_file=b.jsonl"]}


@pytest.mark.parametrize("group,option", [(g, o) for g in ("method", "data", "model", "trainer", "logger",
                                                          "experiment", "debug", "hydra/launcher", "study")
                                          for o in options(g)])
def test_every_config_composes(group, option, tmp_path):
    key = {"model": "model@student", "hydra/launcher": "hydra/launcher"}.get(group, group)
    cfg = compose_cfg([f"{key}={option}", *MANDATORY.get(option, [])], tmp_path)
    if group == "method":
        assert isinstance(instantiate(cfg.method, _convert_="object"), Method)
    elif group == "model":
        spec = instantiate(cfg.student)
        expected = StoredTeacherSpec if option == "stored" else ModelSpec
        assert isinstance(spec, expected) and spec.name == option
    elif group == "data":
        spec = instantiate(cfg.data, _convert_="object")
        assert isinstance(spec, DataSpec) and isinstance(spec.task, Task) and isinstance(spec.decoding, Decoding)
        assert spec.task.scorer().table_metrics  # every task declares what its tables show
    elif group == "trainer":
        arguments = instantiate(cfg.trainer, _convert_="all")
        if option == "cpu":
            trainer = L.Trainer(**arguments, logger=False)
            assert trainer.max_steps == cfg.trainer.max_steps and torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(False)
        else:
            assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
        if option in ("ddp", "fsdp"):
            assert type(arguments["strategy"]).__name__ == {"ddp": "DDPStrategy", "fsdp": "FSDPStrategy"}[option]
    elif group == "hydra/launcher":
        assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher")
    elif group == "logger":
        if option == "csv":
            assert instantiate(cfg.logger).save_dir == cfg.paths.output_dir
        else:
            assert set(cfg.logger.tags) >= {"sft", "sqlgen", "student=llama-xs", "seed=0"}
    elif group == "experiment":
        expected = {"text2sql_tiny": ("llama-m", "llama-xs", 400, "sqlgen"),
                    "kid_paper": ("qwen1.5-4b", "qwen1.5-0.5b", -1, "spider")}[option]
        assert (cfg.teacher.name, cfg.student.name, cfg.trainer.max_steps, cfg.data_name) == expected
    elif group == "debug":
        took_effect = {"fdr": cfg.trainer.get("fast_dev_run") == 2, "limit": cfg.trainer.max_steps == 30,
                       "overfit": cfg.data.limit_train == 32, "profiler": cfg.trainer.get("profiler") == "simple"}
        assert took_effect[option]
    elif group == "study":
        from kdlight.pipelines.study import StudyPlan

        plan = StudyPlan.from_config(cfg.study)
        assert plan.name == option and plan.stages and plan.jobs(tmp_path)


def test_slurm_resources_follow_the_trainer(tmp_path):
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    cpu = compose_cfg(["hydra/launcher=slurm", "trainer=cpu", "trainer.devices=2", "trainer.strategy=ddp"], tmp_path)
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node) == (2, None)  # processes, no GPU


def test_misspelt_key_fails_at_composition(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_cfg(["optimizer.lrr=0.1"], tmp_path)


@pytest.mark.parametrize("overrides", [
    ["stage=teacher", "method=sft"],
    *[[f"method={m}"] for m in options("method") if m != "noisy_kd"],
    ["method=noisy_kd", "teacher.config.attention_dropout=0.1"],  # noisy KD needs a teacher with dropout
    ["method=rkd", "model@student=t5-xs", "model@teacher=llama-s"],  # seq2seq student, causal teacher
    ["method=fkd", "model@student=t5-xs", "model@teacher=t5-s", "loop.micro_batch_size=8"],
], ids=lambda o: " ".join(o))
def test_every_method_runs_fast_dev_run(overrides, tmp_path):
    cfg = compose_cfg(["debug=fdr", *overrides], tmp_path)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["steps"] == 2 and metrics["method"] == cfg.method.name
    assert json.loads((run / "metrics.json").read_text()) == metrics
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert metrics["eval/n"] == len(records) == 8 and [r["index"] for r in records] == list(range(8))
    assert metrics["eval/ex"] == pytest.approx(100 * sum(r["ex"] for r in records) / 8)  # scores = its records
    assert (run / "model" / "config.json").exists() and (run / "model" / "tokenizer_config.json").exists()
    if cfg.method.divergence is not None:
        assert metrics["teacher_params"] > 0


def test_cli_multirun_writes_one_folder_per_job_and_survives_a_failed_job(tmp_path):
    # jobs with a negative learning rate fail (AdamW refuses it); the others must still run
    sweep = tmp_path / "sweep"
    done = multirun(sweep, ["debug=fdr", "method=sft,rkd", "optimizer.lr=-1,1e-3"], tmp_path.parent / "cache",
                    fails=True)  # every job runs, then the command exits non-zero
    finished = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    failed = sorted(p.parent.name for p in sweep.glob("*/error.txt"))
    assert len(finished) == 2 and all("optimizer.lr=0.001" in job for job in finished)
    assert len(failed) == 2 and all("optimizer.lr=-1" in job for job in failed)
    assert "Invalid learning rate" in (sweep / failed[0] / "error.txt").read_text()
    log = done.stderr + done.stdout
    assert "job failed: ValueError" in log and "the sweep goes on" in log and "2 job(s) of the sweep failed" in log
    for job in finished:
        assert (sweep / job / ".hydra" / "config.yaml").exists()


@pytest.mark.gpu
def test_gpu_trainer_runs_bf16_fast_dev_run(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = compose_cfg(["debug=fdr", "trainer=gpu", "method=rkd"], tmp_path)
    metrics = train(cfg)
    assert metrics["steps"] == 2 and metrics["eval/n"] == 8


def test_run_logs_its_resolved_config_and_metrics_as_csv(tmp_path):
    import csv

    import yaml

    cfg = compose_cfg(["debug=limit", "trainer.max_steps=4", "data.limit_eval=4",
                       "method=fkd", "trainer.log_every_n_steps=1"], tmp_path)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    logged = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert logged["method"]["name"] == "fkd" and logged["trainer"]["max_steps"] == 4
    assert logged["paths"]["output_dir"] == str(run) and "hydra" not in logged  # resolved, no interpolations
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    columns = set(rows[0])
    assert {"train/ce", "train/kd_fkl", "train/loss", "val/ce", "val/kl_from_teacher", "eval/ex"} <= columns
    assert sum(1 for r in rows if r["train/kd_fkl"]) == 4  # each loss term logged at every step


def test_submitit_local_launcher_runs_a_two_job_multirun(tmp_path):
    multirun(tmp_path / "sweep", ["hydra/launcher=local", "debug=fdr", "method=sft,fkd"], tmp_path.parent / "cache")
    results = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")}
    assert {m["method"] for m in results.values()} == {"sft", "fkd"}
    assert all(m["steps"] == 2 for m in results.values())
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # really ran through submitit


def test_teachers_are_published_by_size_and_found_by_student_runs(tmp_path):
    teachers = tmp_path / "teachers"
    cfg = compose_cfg(["debug=fdr", "stage=teacher", "model@teacher=llama-s", f"paths.teachers_dir={teachers}"],
                      tmp_path / "t")
    train(cfg)
    stored = teachers / "sqlgen" / "llama-s"
    assert (stored / "config.json").exists() and (stored / "tokenizer_config.json").exists()

    cfg = compose_cfg(["debug=fdr", "method=fkd", "model@teacher=llama-s", "teacher_from_store=true",
                       f"paths.teachers_dir={teachers}"], tmp_path / "s")
    metrics = train(cfg)
    assert metrics["teacher"] == "llama-s" and metrics["teacher_params"] > 0
    # the student run used the stored teacher's tokenizer (no tokenizer trained in this run)
    assert not (Path(cfg.paths.output_dir) / "tokenizer").exists()

    cfg = compose_cfg(["debug=fdr", "method=fkd", "model@teacher=llama-l", "teacher_from_store=true",
                       f"paths.teachers_dir={teachers}"], tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no stored teacher 'llama-l' .* stage=teacher model@teacher=llama-l"):
        train(cfg)


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the offline W&B run under run_dir, read back with wandb's own inspector."""
    log_file = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    done = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log_file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
def test_wandb_offline_run_holds_config_tags_metrics_and_is_always_finished(tmp_path, monkeypatch, fails):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(["logger=wandb", "debug=limit", "trainer.max_steps=3", "data.limit_eval=4",
                       "method=rkd", "trainer.log_every_n_steps=1",
                       *(["optimizer.lr=-1"] if fails else [])], tmp_path)
    if fails:
        with pytest.raises(Exception, match="Invalid learning rate"):
            train(cfg)
    else:
        train(cfg)
    records = wandb_records(Path(cfg.paths.output_dir))
    run = next(r["run"] for r in records if r["type"] == "run")
    assert set(run["tags"]) >= {"rkd", "sqlgen", "teacher=llama-m", "student=llama-xs", "seed=0"}
    assert run["run_group"] == str(tmp_path / "run")  # a single run is a group of its own
    assert run["display_name"] == "rkd-llama-xs"
    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert len(exits) == 1 and exits[0].get("exit_code", 0) == (1 if fails else 0)  # finished either way
    if not fails:
        config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
        assert config["method"]["name"] == "rkd" and config["trainer"]["max_steps"] == 3  # the resolved config
        logged = {k for r in records if r["type"] == "history" for k in r["history"]["item"]}
        assert {"train/ce", "train/kd_rkl", "train/loss", "val/ce", "val/kl_from_teacher", "eval/ex"} <= logged


def test_slurm_requeue_has_one_owner(tmp_path, monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from kdlight.config.build import build_run, slurm_plugins

    cfg = compose_cfg(["hydra/launcher=slurm"], tmp_path)
    assert cfg.hydra.launcher.max_num_timeout > 0  # the launcher requeues on timeout
    assert slurm_plugins(cfg.requeue_owner) == []  # not under SLURM: nothing to own
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "kdlight", "SLURM_JOB_ID": "123",
                       "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    slurm = [p for p in build_run(cfg).plugins if isinstance(p, SLURMEnvironment)]
    assert len(slurm) == 1 and slurm[0].auto_requeue is False  # Lightning does not requeue as well
    assert slurm_plugins("lightning") == []  # Lightning's default applies
    with pytest.raises(ValueError, match="requeue_owner must be one of"):
        slurm_plugins("both")
    metrics = train(compose_cfg(["debug=fdr"], tmp_path))  # a run under (simulated) SLURM with the plugin
    assert metrics["steps"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["replicate", "shard"])
def test_fsdp_bf16_fast_dev_run(tmp_path, placement):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = compose_cfg(["debug=fdr", "trainer=fsdp", f"trainer.devices={min(2, torch.cuda.device_count())}",
                       "method=rkd", f"loop.teacher_placement={placement}"], tmp_path)
    metrics = train(cfg)
    assert metrics["steps"] == 2 and metrics["eval/n"] == 8


def test_skip_finished_returns_the_metrics_without_running_and_teacher_kl_measures_sft(tmp_path):
    cfg = compose_cfg(["debug=fdr", "method=sft", "teacher_kl=true", "skip_finished=true"], tmp_path)
    first = train(cfg)
    assert first["teacher"] == "llama-m" and first["val/kl_from_teacher"] > 0  # SFT, yet measured
    metrics = Path(cfg.paths.output_dir) / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    assert train(cfg) == json.loads(metrics.read_text()) and metrics.stat().st_mtime_ns == stamp


def test_sweep_folder_names_drop_paths_and_stay_short():
    from kdlight.cli.train import job_dirname

    assert job_dirname("method=kid,seed=0,student.path=/a/b/model") == "method=kid,seed=0"
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    name = job_dirname(long)
    assert len(name) == 120 and name != job_dirname(long + ",x=1") and "/" not in name
