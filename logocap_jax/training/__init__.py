"""Training: the training-time model path, the losses, the loop and what a run writes."""
