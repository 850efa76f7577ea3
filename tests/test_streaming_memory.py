"""Prediction streams: the predict CLI's resident memory stays flat over a long run.

300 synthetic 240 x 320 photos go through the predict command (tiny model, no flip test, 'partial'
adaptation: the path of every image without the slow global stage); the child's RSS is read (psutil)
after each image it reports. Keeping any per-image data (the decoded image, 0.23 MB; its network
input and outputs, 1 MB; its results) would grow it by tens to hundreds of MB over the run.

glibc gives each thread that allocates (XLA's and OpenCV's workers) an arena of its own that
grows to that thread's high-water mark, up to ~50 MB here in the first hundred images whatever the
program keeps; MALLOC_ARENA_MAX=2 bounds that noise so that what is measured is what the program
keeps.
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 300
MAX_GROWTH_MB = 50
# Over the second half of the run, when the allocators have warmed up: the median RSS of the
# last images against that of the images around the middle. Single readings swing by 10-16 MB
# under load (threads' transient buffers come and go); a kept decoded image per image would
# add 0.23 MB x 135 = 31 MB.
MAX_LATE_GROWTH_MB = 8
WINDOW = 30
TIMEOUT = 900


@pytest.fixture(scope="module")
def rss_per_image(tmp_path_factory):
    """The CLI's RSS (MB) after each image, and its exit status."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    base = cv2.resize(cv2.imread(str(ROOT / "data/coco_mini/images/000000197388.jpg")), (320, 240))
    for index in range(IMAGES):
        noise = rng.integers(-20, 20, base.shape, dtype=np.int16)
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{index:04d}.jpg"), image)
    command = [sys.executable, "-m", "logocap_jax.commands.predict", str(folder)]
    command += ["--config", "configs/tiny.py", "--state_dict"]
    command += ["tests/data/golden/tiny_state_dict.npz", "--output_dir", str(folder / "out")]
    command += ["--no_draw", "--config.decode.flip_test=false"]
    command += ["--config.decode.adaptation=partial"]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        MALLOC_ARENA_MAX="2",
    )
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    child, rss = psutil.Process(process.pid), []
    try:
        for line in process.stdout:
            if line.rstrip().endswith(" people"):
                rss.append(child.memory_info().rss / 2**20)
        status = process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
    return rss, status


def test_every_image_was_predicted(rss_per_image):
    rss, status = rss_per_image
    assert status == 0 and len(rss) == IMAGES


def test_memory_is_flat_after_the_first_batch(rss_per_image):
    rss, _ = rss_per_image
    first = rss[0]
    assert max(rss) - first < MAX_GROWTH_MB, (first, max(rss))
    middle = np.median(rss[IMAGES // 2 - WINDOW // 2 : IMAGES // 2 + WINDOW // 2])
    last = np.median(rss[-WINDOW:])
    assert last - middle < MAX_LATE_GROWTH_MB, (middle, last)
