"""Training: steps, data iteration, checkpoints, metrics and the loop; no gin, no flags."""
