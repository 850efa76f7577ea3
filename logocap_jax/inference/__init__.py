"""Test-time inference, images to poses: the pipeline, the Predictor, pre- and post-processing,
drawing and timing."""
