"""`kdlight-profile`: the practical cost of a teacher/student pair, measured side by side.

    kdlight-profile model@teacher=llama-m model@student=llama-xs
    kdlight-profile model@teacher=hf teacher.path=/models/big model@student=hf student.path=/models/small \
        device=cuda memory_cap_gb=40 max_batch_size=256

Prints a Markdown table (one row per model: parameters, FLOPs, forward and generation latency,
throughput at the largest batch under `memory_cap_gb`, ratios to the teacher) and writes it to
profile.md, with profile.csv and profile.json, in the run folder. What is measured and how:
`kdlight.run.profile`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdlight.cli.train import CONFIG_DIR
from kdlight.run.profile import ProfileRun
from kdlight.run.profile import profile as profile_run

log = logging.getLogger(__name__)


def build_profile(cfg: DictConfig) -> ProfileRun:
    """The `ProfileRun` a `kdlight-profile` config describes."""
    return ProfileRun(data=instantiate(cfg.data, _convert_="object"),
                      models={"teacher": instantiate(cfg.teacher), "student": instantiate(cfg.student)},
                      tokenizer=instantiate(cfg.tokenizer), device=cfg.device, prompts=cfg.prompts,
                      batch_size=cfg.batch_size, max_batch_size=cfg.max_batch_size, memory_cap_gb=cfg.memory_cap_gb,
                      repeats=cfg.repeats, warmup=cfg.warmup, flops=cfg.flops, reference=cfg.reference,
                      seed=cfg.seed, threads=cfg.threads, data_name=cfg.data_name)


def profile(cfg: DictConfig) -> list[dict]:
    """Profile the models the config names; returns the rows (also in the run folder's files)."""
    return profile_run(build_profile(cfg), Path(cfg.paths.output_dir))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="profile")
def main(cfg: DictConfig) -> None:
    log.info("config:\n" + OmegaConf.to_yaml(cfg, resolve=True))
    profile(cfg)
    out = Path(cfg.paths.output_dir)
    print((out / "profile.md").read_text(), flush=True)
    log.info(f"written: {out / 'profile.md'}, profile.csv, profile.json")


if __name__ == "__main__":
    main()
