"""Multi-run recipes over `train`/`evaluate`: studies (a grid of stages, resumed, then reports)."""
