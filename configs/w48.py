"""LOGO-CAP with HRNet-W48 on COCO (the official W48 recipe): W32 widened x1.5,
heatmap transition 48 wide, input 640."""

from . import w32


def get_config():
    config = w32.get_config()
    config.model.stage_widths = (48, 96, 192, 384)
    config.model.heatmap_width = 48
    config.test.input_size = 640
    config.data.input_size = 640
    config.data.output_size = 160
    return config
