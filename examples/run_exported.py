"""Runs an exported LOGO-CAP program on photos with jax, numpy and OpenCV only (no flax, no
logocap_jax), and prints their poses as COCO keypoint results (docs/export.md).

  pip install jax flatbuffers opencv-python-headless
  python run_exported.py EXPORT_DIR photo.jpg [more.jpg ...] [--out poses.json]

EXPORT_DIR is what `python -m logocap_jax.commands.export` wrote: model.json, weights.npz and
the programs. Each photo is warped as the official test code warps it, normalised, run, and its
keypoints are mapped back to photo pixels and thinned by pose NMS.
"""

import argparse
import json
import os

import cv2
import numpy as np
from jax import export


def three_points(center, width):
    """The centre, the point width / 2 above it, and that point turned by 90 degrees about
    the centre: the point pairs of the official warp, rounded to float32 as it rounds them."""
    a = np.asarray(center, np.float32)
    b = (np.asarray(center, np.float64) + np.array([0.0, -0.5 * width])).astype(np.float32)
    d = a - b
    return np.stack([a, b, b + np.array([-d[1], d[0]], np.float32)])


def official_warp(width, height, warp):
    """(affine [2, 3] from photo to network input, its inverse, input size (W, H)) as the
    official test code computes them; model.json's input.warp gives the constants."""
    divisor, unit = warp["size_divisor"], warp["scale_unit_px"]

    def ceil(value):
        return int((value + divisor - 1) // divisor * divisor)

    center = np.array([int(width / 2.0 + 0.5), int(height / 2.0 + 0.5)], np.float64)
    short = ceil(warp["short_side"])
    if width < height:
        size = (short, ceil(short / width * height))
        source_width = width / unit * unit
    else:
        size = (ceil(short / height * width), short)
        source_width = size[0] / size[1] * height / unit * unit
    source = three_points(center, source_width)
    target = three_points(np.array([size[0] * 0.5, size[1] * 0.5]), size[0])
    return cv2.getAffineTransform(source, target), cv2.getAffineTransform(target, source), size


def pose_nms(xy, scores, distance_ratio, min_joints):
    """Greedy pose NMS in slot order: the indices of the poses kept."""
    extent = xy.max(axis=1) - xy.min(axis=1)
    threshold = np.float32(distance_ratio) * np.sqrt((extent * extent).sum(axis=1))
    diff = xy[:, None] - xy[None]
    close = (np.sqrt((diff * diff).sum(axis=3)) < threshold[:, None, None]).sum(axis=2)
    groups, ignored, keep = close > min_joints, np.zeros(len(xy), bool), []
    for i in range(len(xy)):
        members = np.flatnonzero(groups[i])
        if ignored[i] or not members.size:
            continue
        best = members[np.argmax(scores[members])]
        if not ignored[best]:
            keep.append(best)
            ignored[members] = True
    return np.array(keep, np.int64)


class ExportedModel:
    """An export folder: call it on an RGB photo for (keypoints [P, 17, 3], scores [P])."""

    def __init__(self, folder):
        with open(os.path.join(folder, "model.json")) as f:
            self.description = json.load(f)
        self.weights = dict(np.load(os.path.join(folder, self.description["weights"]["file"])))
        self.folder, self.programs = folder, {}

    def program(self, size):
        """The program for a network input of `size` (W, H): its own, else the 'any' one."""
        files = self.description["programs"]
        name = next((n for n in (f"{size[0]}x{size[1]}", "any") if n in files), None)
        if name is None:
            raise SystemExit(
                f"no program for {size[0]}x{size[1]} inputs in {self.folder}; export one "
                f"with --sizes {size[0]}x{size[1]} (or any)"
            )
        if name not in self.programs:
            with open(os.path.join(self.folder, files[name]), "rb") as f:
                try:
                    self.programs[name] = export.deserialize(bytearray(f.read()))
                except ImportError as error:  # jax reads the files with flatbuffers
                    raise SystemExit(f"{error}: pip install flatbuffers") from None
        return self.programs[name]

    def __call__(self, photo_rgb):
        inputs, post = self.description["input"], self.description["post_processing"]
        forward, inverse, size = official_warp(
            photo_rgb.shape[1], photo_rgb.shape[0], inputs["warp"]
        )
        warped = cv2.warpAffine(photo_rgb, forward, size, flags=cv2.INTER_LINEAR, borderValue=0)
        mean, std = np.float32(inputs["mean"]), np.float32(inputs["std"])
        image = (warped.astype(np.float32) / np.float32(255.0) - mean) / std
        poses, scores, valid = (
            np.asarray(x[0]) for x in self.program(size).call(self.weights, image[None])
        )
        poses, scores = poses[valid], scores[valid]
        # Back to photo pixels, computed in float64 and stored as float32.
        x, y = poses[..., 0].astype(np.float64), poses[..., 1].astype(np.float64)
        poses[..., 0] = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
        poses[..., 1] = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
        keep = pose_nms(poses[..., :2], scores, post["nms_distance_ratio"], post["nms_min_joints"])
        poses, scores = poses[keep], scores[keep]
        if len(keep) > post["max_people"]:
            top = np.argsort(-scores, kind="stable")[: post["max_people"]]
            poses, scores = poses[top], scores[top]
        return poses, scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="the folder written by logocap_jax.commands.export")
    parser.add_argument("photos", nargs="+", help="image files")
    parser.add_argument("--out", help="write the results here instead of printing them")
    args = parser.parse_args()
    model, results = ExportedModel(args.export_dir), []
    for index, path in enumerate(args.photos):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise SystemExit(f"{path}: cannot read the image")
        keypoints, scores = model(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        results += [
            {"image": path, "image_id": index, "category_id": 1,
             "keypoints": pose.reshape(-1).tolist(), "score": score.item()}
            for pose, score in zip(keypoints, scores)
        ]  # fmt: skip
    text = json.dumps(results)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
