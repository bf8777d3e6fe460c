"""Training: task (model + head -> loss dict), loop, optimiser, checkpoints, logs."""
