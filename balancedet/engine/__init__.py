"""The trainer behind ``balancedet train / eval / predict``: configs, the training loop, COCO
evaluation, checkpoints and the run folder's plots."""
