"""Hydra configs -> typed components: `build_run`, `build_eval` (the only code that reads a config)."""

from kdlight.config.build import build_eval, build_run

__all__ = ["build_eval", "build_run"]
