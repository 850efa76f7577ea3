"""Poses over time: ids that persist across frames, and keypoint smoothing."""

import os

# OpenCV's FFmpeg prints its own lines about a bad or cut video ("moov atom not found") next to
# the one-line errors and counted skips of this package, which name the file and the frames.
# OpenCV reads this variable once, when it first uses FFmpeg; -8 is FFmpeg's quiet level. A value
# already set in the environment (e.g. to debug a stream) wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
