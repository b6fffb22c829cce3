"""Multi-run recipes over `train`/`evaluate`: studies (a grid of stages, resumed, then reports) and
budgeted distillation (BalDistill's stages of selection, annotation and training)."""
