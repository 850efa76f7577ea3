"""A short video made from a bundled photo, for the demo notebook and the tests.

  path = demo_clip.write_demo_clip("walk.mp4")  # 16 frames, 320 x 240, 10 fps

A camera pans right over a COCO photo with several people while zooming in, so the people drift
slowly across the frame and grow: the motion a tracker must follow, in a clip that needs no
download.
"""

import cv2
import numpy as np

from logocap_jax import resources
from logocap_jax.inference import preprocess

# A coco_mini photo (640 x 392) with several people standing side by side.
PHOTO = ("coco_mini", "images", "000000197388.jpg")
FRAMES = 16
SIZE = (320, 240)
FPS = 10.0


def pan_zoom_frames(photo: np.ndarray, count: int = FRAMES, size: tuple = SIZE) -> list:
    """Frames of a camera panning left to right over `photo` and zooming in.

    The view starts at 0.9 of the photo's width at the left edge and ends at 0.65 of it at the
    right edge, vertically centred, with the aspect ratio of `size` (narrower where the photo is
    not tall enough for it).

    Args:
      photo: [h, w, 3] uint8 image, in any channel order (the frames keep it).
      count: number of frames.
      size: (width, height) of each frame.

    Returns:
      `count` [height, width, 3] uint8 frames.
    """
    height, width = photo.shape[:2]
    images = []
    for i in range(count):
        t = i / max(count - 1, 1)
        crop_h = min(int(width * (0.9 - 0.25 * t)) * size[1] // size[0], height)
        crop_w = crop_h * size[0] // size[1]
        x = int((width - crop_w) * t)
        y = (height - crop_h) // 2
        images.append(cv2.resize(photo[y : y + crop_h, x : x + crop_w], tuple(size)))
    return images


def write_clip(path, images_rgb: list, fps: float = FPS, fourcc: str = "mp4v") -> str:
    """Writes RGB frames as a video with OpenCV.

    Args:
      path: the file to write; its extension picks the container (.mp4, .avi).
      images_rgb: [h, w, 3] uint8 RGB frames, all of one size.
      fps: frame rate.
      fourcc: the codec, e.g. 'mp4v' (fast to encode) or 'MJPG' (for .avi).

    Returns:
      `path` as a string.

    Raises:
      OSError: OpenCV cannot open a writer for `path` with `fourcc`.
    """
    height, width = images_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write a video with codec {fourcc!r}")
    try:
        for image in images_rgb:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return str(path)


def demo_frames(count: int = FRAMES, size: tuple = SIZE) -> list:
    """RGB frames of the pan and zoom over the bundled PHOTO."""
    return pan_zoom_frames(preprocess.read_image(resources.data_path(*PHOTO)), count, size)


def write_demo_clip(path, count: int = FRAMES, size: tuple = SIZE, fps: float = FPS) -> str:
    """Writes the pan and zoom over the bundled PHOTO to `path` (MPEG-4 Part 2); returns it."""
    return write_clip(path, demo_frames(count, size), fps)
