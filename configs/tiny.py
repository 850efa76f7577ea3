"""The tiny model of the golden parity fixtures, for tests and CPU demos (643,805 parameters).

Same code path as W32 with far fewer channels, blocks and modules; test-time short side 128.
"""

from . import w32


def get_config():
    config = w32.get_config()
    config.model.stage_widths = (8, 16, 32, 64)
    config.model.stage_modules = (1, 1, 1)
    config.model.num_blocks = 1
    config.model.heatmap_width = 8
    config.model.offset_width = 16
    config.model.embedding_dim = 8
    config.model.cmp_options.widths = (32, 16, 8)
    config.test.input_size = 128
    return config
