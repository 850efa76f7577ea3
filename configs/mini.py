"""A few-minute CPU training run: the tiny model on bundled coco_mini images.

Trains on the first 8 coco_mini images at 256 x 256, with flips but no scale, rotation or
translation jitter, and evaluates (pycocotools keypoint AP) on the same images: it shows the whole
training path learning, not generalisation.

  python train.py --config configs/mini.py --workdir workdir/mini
"""

from configs import tiny


def get_config():
    config = tiny.get_config()
    config.data.dataset = "coco_mini"
    config.data.split = "train"
    config.data.input_size = 256
    config.data.output_size = 64
    config.data.worker_count = 0
    config.data.max_examples = 8
    config.data.max_rotation = 0.0
    config.data.min_scale = 1.0
    config.data.max_scale = 1.0
    config.data.max_translate = 0.0
    config.train.global_batch_size = 4
    config.train.num_steps = 400
    config.train.learning_rate = 2e-3
    config.train.max_instances = 8
    config.train.lr_drop_epochs = (150,)
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 50
    config.train.eval_every_steps = 100
    config.eval.annotations = "data/coco_mini/annotations/person_keypoints_mini.json"
    config.eval.images = "data/coco_mini/images"
    config.eval.max_images = 8
    config.test.input_size = 256
    return config
