"""Poses over time: ids that persist across frames, and keypoint smoothing."""
