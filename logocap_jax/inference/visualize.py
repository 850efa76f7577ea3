"""Drawing of poses and of one instance's local/global refinement, with OpenCV only.

All images are RGB uint8 [h, w, 3]; keypoints are in the image's pixel coordinates, with
integer coordinates at pixel centres (cv2's convention, design §3.10).
"""

import colorsys
from pathlib import Path

import cv2
import numpy as np

from logocap_jax.keypoints import JOINT_NAMES, NUM_JOINTS, SKELETON

DEFAULT_KEYPOINT_THRESHOLD = 0.1
STYLES = ("pred", "gt")
GT_COLOR = (255, 255, 255)
UNTRACKED_COLOR = (160, 160, 160)
PANEL_TILE = 256
PANEL_GAP = 4

# cv2 drawing needs int32-safe coordinates; anything this far out is off-image anyway.
_COORD_LIMIT = 1 << 20


def _side(names):
    """-1 for the left side, +1 for the right, 0 for the midline (or a left-right link)."""
    left = any(n.startswith("left_") for n in names)
    right = any(n.startswith("right_") for n in names)
    return int(right) - int(left)


_JOINT_SIDES = tuple(_side([name]) for name in JOINT_NAMES)
_LIMB_SIDES = tuple(_side([JOINT_NAMES[a], JOINT_NAMES[b]]) for a, b in SKELETON)


def person_color(index):
    """A distinct saturated RGB color for person ``index`` (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0))


def _side_color(color, side):
    """The person's color, tinted towards white on the left and shaded towards black on the
    right, so both sides of one person differ while keeping its hue."""
    if side == 0:
        return tuple(int(c) for c in color)
    target = 255.0 if side < 0 else 0.0
    return tuple(int(round(0.55 * c + 0.45 * target)) for c in color)


def _check_image(image_rgb):
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must be uint8 [h, w, 3], got {image.dtype} {image.shape}")
    return image


def _check_keypoints(keypoints, scores):
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"keypoints must be [P, {NUM_JOINTS}, 3], got {keypoints.shape}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.shape != (keypoints.shape[0],):
            raise ValueError(f"scores must be [P] = [{keypoints.shape[0]}], got {scores.shape}")
    return keypoints, scores


def _drawing_sizes(shape, style):
    """Line thickness and joint radius, growing with the image so poses stay visible."""
    thickness = max(1, int(round(min(shape[:2]) / 160)))
    if style == "gt":
        return max(1, thickness // 2), thickness + 1
    return thickness, thickness + 1


def _draw_person(canvas, person, color, style, threshold):
    """Draws one [K, 3] pose in place; returns the pixel points of its drawn joints."""
    visible = np.all(np.isfinite(person), axis=1) & (person[:, 2] >= threshold)
    points = np.clip(np.nan_to_num(person[:, :2]), -_COORD_LIMIT, _COORD_LIMIT)
    points = np.rint(points).astype(np.int32)
    thickness, radius = _drawing_sizes(canvas.shape, style)
    for (a, b), side in zip(SKELETON, _LIMB_SIDES):
        if visible[a] and visible[b]:
            cv2.line(
                canvas,
                tuple(points[a]),
                tuple(points[b]),
                _side_color(color, side),
                thickness,
                cv2.LINE_AA,
            )
    # Ground truth gets hollow joints, so it stays readable under predicted (filled) joints.
    fill = 1 if style == "gt" else cv2.FILLED
    for k in np.flatnonzero(visible):
        cv2.circle(
            canvas, tuple(points[k]), radius, _side_color(color, _JOINT_SIDES[k]), fill, cv2.LINE_AA
        )
    return points[visible]


def _draw_score(canvas, drawn, score, color):
    """Writes the pose score just above the topmost drawn joint."""
    _draw_label(canvas, drawn, f"{score:.2f}", color)


def _draw_label(canvas, drawn, text, color):
    """Writes `text` just above the topmost of the drawn joints [n, 2]."""
    x, y = drawn[np.argmin(drawn[:, 1])]
    cv2.putText(
        canvas,
        text,
        (int(x), int(y) - 6),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.4,
        color,
        1,
        cv2.LINE_AA,
    )


def draw_poses(
    image_rgb,
    keypoints,
    *,
    scores=None,
    keypoint_threshold=DEFAULT_KEYPOINT_THRESHOLD,
    color=None,
    style="pred",
):
    """Draws poses (COCO skeleton) on a copy of an image.

    Each person gets its own hue; within a person, left limbs/joints are lighter and right
    ones darker than the midline ones.

    Args:
      image_rgb: uint8 [h, w, 3] RGB image; not modified.
      keypoints: [P, 17, 3] (x, y, score) per joint, in pixels of ``image_rgb``. For ground
        truth the third value is the COCO visibility flag (0 = unlabelled).
      scores: optional [P] pose scores, written next to each person.
      keypoint_threshold: joints whose score is below it (or non-finite) are not drawn,
        nor are limbs touching them.
      color: one RGB color for every person, instead of per-person colors.
      style: 'pred' (thick limbs, filled joints) or 'gt' (thin limbs, hollow joints, white
        unless ``color`` is given).

    Returns:
      The drawn uint8 [h, w, 3] RGB image.
    """
    canvas = _check_image(image_rgb).copy()
    keypoints, scores = _check_keypoints(keypoints, scores)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if color is None and style == "gt":
        color = GT_COLOR
    for p, person in enumerate(keypoints):
        person_rgb = person_color(p) if color is None else tuple(int(c) for c in color)
        drawn = _draw_person(canvas, person, person_rgb, style, keypoint_threshold)
        if scores is not None and len(drawn):
            _draw_score(canvas, drawn, scores[p], person_rgb)
    return canvas


def draw_tracks(image_rgb, keypoints, ids, *, keypoint_threshold=DEFAULT_KEYPOINT_THRESHOLD):
    """Draws tracked poses on a copy of an image, each coloured by its track id, which is
    written above it, so a person keeps its colour across the frames of a video.

    Args:
      image_rgb: uint8 [h, w, 3] RGB image; not modified.
      keypoints: [P, 17, 3] (x, y, score) in pixels of ``image_rgb``.
      ids: [P] track ids; a negative id (an untracked person) is drawn grey, without a label.
      keypoint_threshold: as for `draw_poses`.

    Returns:
      The drawn uint8 [h, w, 3] RGB image.
    """
    canvas = _check_image(image_rgb).copy()
    keypoints, _ = _check_keypoints(keypoints, None)
    ids = np.asarray(ids).ravel()
    if ids.shape != (keypoints.shape[0],):
        raise ValueError(f"ids must be [P] = [{keypoints.shape[0]}], got {ids.shape}")
    for person, track in zip(keypoints, ids):
        color = person_color(int(track)) if track >= 0 else UNTRACKED_COLOR
        drawn = _draw_person(canvas, person, color, "pred", keypoint_threshold)
        if track >= 0 and len(drawn):
            _draw_label(canvas, drawn, str(int(track)), color)
    return canvas


def draw_caption(image_rgb, text):
    """Writes one line of text at the top left of an image, in place (white on a dark
    outline, readable on any background)."""
    image = _check_image(image_rgb)
    scale = max(0.4, min(image.shape[:2]) / 600)
    origin = (6, int(6 + 20 * scale))
    for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, width, cv2.LINE_AA)
    return image


def save_png(path, image_rgb):
    """Writes an RGB uint8 [h, w, 3] image as PNG, creating parent directories."""
    image = _check_image(image_rgb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2 could not write the image to {path}")


def _color_map(values, lo, hi, tile):
    """A [m, n] map as a JET color image [tile, tile, 3], one flat block per cell."""
    scaled = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    gray = np.rint(255 * np.clip(np.nan_to_num(scaled), 0, 1)).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.resize(colored, (tile, tile), interpolation=cv2.INTER_NEAREST)


def _label(tile_image, text):
    cv2.putText(tile_image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(
        tile_image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
    )


def _crop_with_samples(image, points, tile):
    """The image around one joint's [S, S, 2] sample points, magnified to [tile, tile, 3].

    The crop is a square 1.5 times the points' extent (at least 16 px), so the window's
    context is visible; the points are drawn after magnification to stay sharp.
    """
    flat = points.reshape(-1, 2)
    center = flat.mean(axis=0)
    half = max(0.75 * float(np.ptp(flat, axis=0).max()), 8.0)
    scale = tile / (2.0 * half)
    # Maps crop-corner (center - half) to 0; pixel centres follow cv2's integer convention.
    affine = np.array(
        [[scale, 0.0, -scale * (center[0] - half)], [0.0, scale, -scale * (center[1] - half)]]
    )
    crop = cv2.warpAffine(image, affine, (tile, tile), flags=cv2.INTER_LINEAR)
    mapped = np.rint(flat * scale + affine[:, 2]).astype(np.int32)
    for x, y in mapped:
        cv2.circle(crop, (int(x), int(y)), 2, (255, 255, 0), cv2.FILLED, cv2.LINE_AA)
    middle = points[points.shape[0] // 2, points.shape[1] // 2] * scale + affine[:, 2]
    cv2.circle(crop, tuple(int(v) for v in np.rint(middle)), 5, (255, 0, 0), 2, cv2.LINE_AA)
    return crop


def _refined_tile(refined_map, tile):
    """The refined heatmap as a color map with its argmax marked by a white cross."""
    side = refined_map.shape[0]
    colored = _color_map(refined_map, float(refined_map.min()), float(refined_map.max()), tile)
    row, col = np.unravel_index(int(np.argmax(refined_map)), refined_map.shape)
    cell = tile / side
    center = (int((col + 0.5) * cell), int((row + 0.5) * cell))
    cv2.drawMarker(colored, center, (255, 255, 255), cv2.MARKER_CROSS, max(15, int(2 * cell)), 2)
    return colored


def _check_panel_inputs(mesh_xy, kams, refined, joint):
    mesh_xy, kams, refined = (np.asarray(a, dtype=np.float64) for a in (mesh_xy, kams, refined))
    if mesh_xy.ndim != 4 or mesh_xy.shape[0] != mesh_xy.shape[1] or mesh_xy.shape[3] != 2:
        raise ValueError(f"mesh_xy must be [S, S, K, 2], got {mesh_xy.shape}")
    if kams.shape != mesh_xy.shape[:3]:
        raise ValueError(f"kams must be [S, S, K] = {mesh_xy.shape[:3]}, got {kams.shape}")
    num_joints = mesh_xy.shape[2]
    if (
        refined.ndim != 3
        or refined.shape[0] != num_joints
        or refined.shape[1] != refined.shape[2]
        or refined.shape[1] == 0
    ):
        raise ValueError(
            f"refined must be [K, A, A] with K = {num_joints} and A > 0, got "
            f"{refined.shape} (only LOGO-CA, adaptation 'full', gives refined maps)"
        )
    if not 0 <= joint < num_joints:
        raise ValueError(f"joint must be in [0, {num_joints}), got {joint}")
    if not np.all(np.isfinite(mesh_xy[:, :, joint])):
        raise ValueError(f"mesh_xy has non-finite points for joint {joint}")
    return mesh_xy, kams, refined


def instance_panel(image_rgb, mesh_xy, kams, refined, joint, *, tile=PANEL_TILE):
    """A three-tile panel explaining how one person's joint was refined.

    Tiles, left to right: (a) the image around the joint with the S x S local-window (KEM)
    sample points, the window centre (initial estimate) ringed; (b) the joint's KAM as a JET
    color map on a fixed [0, 1] scale, as test-time KAMs are clamped to it; (c) the refined
    A x A heatmap (LOGO-CA output), min-max scaled, its argmax marked with a cross.

    Args:
      image_rgb: uint8 [h, w, 3] RGB image in the coordinates of ``mesh_xy`` (the network
        input, i.e. the resized image).
      mesh_xy: [S, S, K, 2] local-window (x, y) sample points of the person, row i = y offset.
      kams: [S, S, K] the person's keypoint attention maps.
      refined: [K, A, A] the person's refined heatmaps.
      joint: which joint to show, 0 <= joint < K.
      tile: side of each square tile in pixels.

    Returns:
      uint8 [tile, 3 * tile + 2 * PANEL_GAP, 3] RGB image.
    """
    image = _check_image(image_rgb)
    mesh_xy, kams, refined = _check_panel_inputs(mesh_xy, kams, refined, joint)
    tiles = [
        _crop_with_samples(image, mesh_xy[:, :, joint], tile),
        _color_map(kams[:, :, joint], 0.0, 1.0, tile),
        _refined_tile(refined[joint], tile),
    ]
    name = JOINT_NAMES[joint] if mesh_xy.shape[2] == NUM_JOINTS else f"joint {joint}"
    for tile_image, text in zip(tiles, (name, "KAM", "refined")):
        _label(tile_image, text)
    gap = np.full((tile, PANEL_GAP, 3), 64, dtype=np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)
