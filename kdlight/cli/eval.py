"""`kdlight-eval`: score a model on a task without training it.

    kdlight-eval model=hf model.path=outputs/<run>/model data=sqlgen       # a trained model
    kdlight-eval model=llama-xs data=geoquery                              # untrained (random init)
    kdlight-eval model=hf model.path=/models/x +benchmark@benchmarks.spider_dk=spider_dk

Writes metrics.json and predictions.jsonl (one per benchmark) to the run folder, like a training
run, so `kdlight-report` puts the zero-shot baseline in the same table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdlight.cli.train import CONFIG_DIR, optimized_value, record_failure
from kdlight.config.build import build_eval
from kdlight.io import FAILURE_FILE
from kdlight.run.evaluate import evaluate

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    log.info("config:\n" + OmegaConf.to_yaml(cfg, resolve=True))
    out = Path(cfg.paths.output_dir)
    try:
        result = evaluate(build_eval(cfg), out)
        (out / FAILURE_FILE).unlink(missing_ok=True)  # a re-run that succeeds is no longer failed
    except Exception as error:
        record_failure(out, error)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        return None
    return optimized_value(cfg, result.metrics)


if __name__ == "__main__":
    main()
