"""COCO person-keypoint constants shared by targets, decoding, evaluation and drawing."""

import numpy as np

NUM_JOINTS = 17

JOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# Per-keypoint OKS constants of the COCO keypoint benchmark.
COCO_SIGMAS = np.array(
    [
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ],
    dtype=np.float32,
)

# Joint permutation under a horizontal image flip (left <-> right).
FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# The same for the K + 1 heatmap channels: the person center (last channel) stays put.
FLIP_INDEX_WITH_CENTER = FLIP_INDEX + (NUM_JOINTS,)

# The 19 limbs of the COCO skeleton, as 0-based joint pairs.
SKELETON = (
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)

# ImageNet statistics of the RGB input normalisation.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Output stride of the network: heads live on an H/4 x W/4 grid.
STRIDE = 4
