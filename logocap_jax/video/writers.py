"""What a video run writes as it goes: the drawn video and one JSON line per frame.

Codec: the pip OpenCV wheels bundle FFmpeg without an H.264 encoder ('avc1' fails to open),
so the default is VP9 in MP4 ('vp09'), which Chrome, Firefox, Edge (and so Colab) play; 'mp4v'
(MPEG-4 Part 2) encodes about 50 times faster but browsers do not play it. Where the default
does not open, the writer falls back to 'mp4v' and says so.
"""

import json
import sys

import cv2
import numpy as np

DEFAULT_CODEC = "vp09"
CODECS = ("vp09", "mp4v")


class VideoFile:
    """A video written frame by frame, all frames at the first frame's size.

    Attributes:
      path: the file.
      codec: the FourCC in use (the asked one, or 'mp4v' after a fallback).
      size: (width, height) of every frame written.
    """

    def __init__(self, path: str, fps: float, size: tuple, codec: str = DEFAULT_CODEC):
        """Opens the file.

        Args:
          path: the .mp4 file to write.
          fps: its frame rate.
          size: (width, height).
          codec: a FourCC of CODECS.

        Raises:
          OSError: no codec opens the file (naming it: a folder that cannot be written, ...).
        """
        self.path, self.size = path, tuple(int(n) for n in size)
        for candidate in dict.fromkeys((codec, "mp4v")):
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*candidate), fps, self.size)
            if writer.isOpened():
                break
            writer.release()
        else:
            raise OSError(0, f"OpenCV cannot write a video ({codec} or mp4v)", path)
        if candidate != codec:
            print(f"warning: codec {codec} unavailable, {path} uses {candidate}", file=sys.stderr)
        self.codec, self._writer = candidate, writer

    def write(self, image_rgb: np.ndarray) -> None:
        """Appends a uint8 RGB frame, resized to `size` if it differs (a source whose frame
        size changed)."""
        if image_rgb.shape[1::-1] != self.size:
            image_rgb = cv2.resize(image_rgb, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finishes the file (an MP4 is playable only after this)."""
        self._writer.release()

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc_info):
        self.close()


class PoseLog:
    """The JSONL log of a video run: one line per frame, flushed as written, so an interrupted
    run keeps every frame it finished.

    A line: {"frame": index in the source, "time": seconds, "width": w, "height": h,
    "people": [{"track_id": id (-1 untracked), "score": pose score, "keypoints": 17 x
    [x, y, score] in frame pixels}, ...]}.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "w")

    def write(self, index: int, timestamp: float, shape: tuple, keypoints, scores, ids) -> None:
        people = [
            {
                "track_id": int(track),
                "score": round(float(score), 5),
                "keypoints": np.round(np.asarray(person, dtype=np.float64), 3).tolist(),
            }
            for person, score, track in zip(keypoints, scores, ids)
        ]
        line = {
            "frame": int(index),
            "time": round(float(timestamp), 6),
            "width": int(shape[1]),
            "height": int(shape[0]),
            "people": people,
        }
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PoseLog":
        return self

    def __exit__(self, *exc_info):
        self.close()
