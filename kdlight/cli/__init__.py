"""Console entry points (thin: a Hydra config becomes typed components in `kdlight.config`)."""
