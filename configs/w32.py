"""LOGO-CAP with HRNet-W32 on COCO, the official recipe (experiments/logocap-hrnet-w32-coco.yaml)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    # Keyword arguments of logocap_jax.models.LogoCap.
    config.model = ml_collections.ConfigDict(dict(
        stage_widths=(32, 64, 128, 256),
        stage_modules=(1, 4, 3),
        num_blocks=4,
        num_joints=17,
        heatmap_width=32,
        offset_width=256,
        embedding_dim=64,
        cmp_variant="conv",
        cmp_options=dict(widths=(512, 256, 128), attentive_norm=(False, True, False),
                         num_affine=20, kernel_size=3),
    ))

    # Keyword arguments of logocap_jax.pipeline.DecodeSettings.
    config.decode = ml_collections.ConfigDict(dict(
        flip_test=True,
        num_centers=30,
        center_threshold=0.01,
        local_half_size=5,
        global_half_size=48,
        global_sigma=16.0,
        reweigh=True,
        adaptation="full",
        sampling="reference",
        dynamic_conv="auto",
        scales=(1.0,),
    ))

    # Test-time resize: short side input_size, long side rounded up to a multiple of 64.
    config.test = ml_collections.ConfigDict(dict(
        input_size=512,
        max_people=30,
        nms_distance_ratio=0.05,
        nms_min_joints=8,
    ))
    return config
