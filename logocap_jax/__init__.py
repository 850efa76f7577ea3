"""LOGO-CAP multi-person pose estimation in JAX/Flax.

Shape notation used in every docstring of the package:

  B  images in a batch
  H, W  input (network) resolution; h, w the output grid, H/4 x W/4
  K  keypoints (17 COCO joints); heatmaps carry K + 1 channels, the last is the person center
  N  candidate instances (center slots) per image, 30 by default
  M  training instances per image carried through the CMP (TrainSettings.max_instances)
  G  ground-truth persons per image, padded to a static count
  P  people returned for an image after pose NMS
  S  side of the local keypoint window (11), A side of the global window (97)
  C  channels

Coordinates are (x, y) in pixels, x along W; integer values denote pixel centers (cv2 convention).
"""

__version__ = "0.1.0"
