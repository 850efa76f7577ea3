"""TPU plans from any host: the training step and inference program compiled for a TPU slice."""
