"""Console entry points: the only code that reads Hydra configs."""
