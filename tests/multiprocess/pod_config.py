"""The multi-process tests' training runs: configs/mini.py at 128 x 128 on every coco_mini
training image, with the official augmentation, a global batch of 8, SGD with momentum at a
learning rate of 1e-3, a checkpoint after every step and an evaluation every 2 steps.

SGD keeps float noise from growing over the steps (Adam's first steps move every parameter by
about the learning rate in the direction of its gradient's sign, so reduction-order noise in
gradients near zero flips whole steps), which lets runs on different process layouts be compared
after several steps (tests/multiprocess/test_pod_training.py gives the measured noise floor).
"""

from configs import mini

# coco_mini images that share one network input size at 128 px (128 x 192), so evaluation
# compiles one program.
EVAL_IMAGE_IDS = (192699, 196141, 488571, 100667)


def get_config():
    config = mini.get_config()
    config.data.input_size = 128
    config.data.output_size = 32
    config.data.image_ids = ()
    config.data.max_rotation = 30.0
    config.data.min_scale = 0.75
    config.data.max_scale = 1.5
    config.data.max_translate = 40.0
    config.data.flip_prob = 0.5
    config.train.global_batch_size = 8
    config.train.optimizer = "sgd"
    config.train.momentum = 0.9
    config.train.learning_rate = 1e-3
    config.train.lr_drop_epochs = ()
    config.train.num_steps = 8
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 1
    config.train.keep_checkpoints = 10
    config.train.eval_every_steps = 2
    config.train.log_image_ids = True
    config.eval.image_ids = EVAL_IMAGE_IDS
    return config
