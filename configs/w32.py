"""LOGO-CAP with HRNet-W32 on COCO, the official W32 recipe."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    # Keyword arguments of logocap_jax.models.LogoCap.
    config.model = ml_collections.ConfigDict(
        dict(
            stage_widths=(32, 64, 128, 256),
            stage_modules=(1, 4, 3),
            num_blocks=4,
            num_joints=17,
            heatmap_width=32,
            offset_width=256,
            embedding_dim=64,
            cmp_variant="conv",
            cmp_options=dict(
                widths=(512, 256, 128),
                attentive_norm=(False, True, False),
                num_affine=20,
                kernel_size=3,
            ),
            # How 3x3 convolutions are computed: auto / native / shifted_dots (same parameters;
            # auto picks per layer, see logocap_jax.models.conv_forms).
            conv_form="auto",
        )
    )

    # Keyword arguments of logocap_jax.logo_ca.LogoCaSettings: the local and global KEM windows,
    # the Gaussian reweighing, sampling and the KAM convolution, shared by test time and training.
    config.logo_ca = ml_collections.ConfigDict(
        dict(
            local_half_size=5,
            global_half_size=48,
            global_sigma=16.0,
            reweigh=True,
            sampling="reference",
            dynamic_conv="auto",
        )
    )

    # Keyword arguments of logocap_jax.inference.pipeline.DecodeSettings (besides logo_ca).
    config.decode = ml_collections.ConfigDict(
        dict(
            flip_test=True,
            num_centers=30,
            center_threshold=0.01,
            adaptation="full",
            scales=(1.0,),
        )
    )

    # Test-time resize: short side input_size, long side rounded up to a multiple of 64;
    # compute_dtype 'bfloat16' casts the parameters once and keeps statistics and decoding in
    # float32.
    config.test = ml_collections.ConfigDict(
        dict(
            input_size=512,
            compute_dtype="float32",
            max_people=30,
            nms_distance_ratio=0.05,
            nms_min_joints=8,
        )
    )

    # Training data: a TFDS ArrayRecord data set (logocap_jax.data.tfds_builders), built on first
    # use or by logocap_jax.commands.build_data.
    config.data = ml_collections.ConfigDict(
        dict(
            dataset="coco_person_keypoints/train2017",
            split="train2017",
            data_dir="~/tensorflow_datasets",
            manual_dir="data/coco",
            input_size=512,
            output_size=128,
            max_people=30,
            max_rotation=30.0,
            min_scale=0.75,
            max_scale=1.5,
            max_translate=40.0,
            flip_prob=0.5,
            worker_count=8,
            # Small runs: only these image ids (empty: all), then the first max_examples (0: all).
            image_ids=(),
            max_examples=0,
        )
    )

    # The official recipe: Adam 1e-3, x0.1 at epochs 90 and 120 of 140, no weight decay,
    # 12 images per GPU (the GPU count is not published).
    config.train = ml_collections.ConfigDict(
        dict(
            global_batch_size=96,
            num_epochs=140,
            num_steps=-1,
            optimizer="adam",  # or "sgd" (with momentum below)
            momentum=0.9,
            learning_rate=1e-3,
            lr_drop_epochs=(90, 120),
            lr_drop_factor=0.1,
            loss_weights=dict(heatmaps=1.0, offsets=0.01, oks=0.01, refined_heatmaps=1.0),
            # Training instances per image through the CMP and LOGO-CA; 0 = all num_centers slots.
            max_instances=0,
            # Instances per global batch through the CMP and LOGO-CA, the selected ones first; the
            # losses equal those of all slots while the batch's selected slots fit. 0 = off.
            instance_budget=0,
            seed=0,
            compute_dtype="float32",
            # Rematerialisation of the training step (logocap_jax.models.remat): "none",
            # "stages" (HRNet stage modules) or "stages_and_heads", under a jax.checkpoint_policies
            # name; it trades a second forward pass of those blocks for memory.
            remat="none",
            remat_policy="nothing_saveable",
            imagenet_checkpoint="",
            # Start from these model variables (a converted checkpoint or a training work
            # directory) instead of the initialisation, except the top-level modules of
            # init_exclude, e.g. ("joints_mlp",) to put a fresh CMP variant on trained weights.
            init_checkpoint="",
            init_exclude=(),
            # Top-level modules whose parameters train, e.g. ("joints_mlp",); empty: all.
            trainable_modules=(),
            # Metrics are read from the devices every log_every_steps (and at checkpoints).
            log_every_steps=50,
            checkpoint_every_steps=2000,
            keep_checkpoints=3,
            eval_every_steps=10000,
            # Write the image ids each process fed at each step to <workdir>/image_ids/.
            log_image_ids=False,
            # Also log to this Weights & Biases project (needs the wandb extra); empty: off.
            wandb_project="",
        )
    )

    # Periodic evaluation during training (COCO-format annotations + images).
    config.eval = ml_collections.ConfigDict(
        dict(
            annotations="data/coco/annotations/person_keypoints_val2017.json",
            images="data/coco/images/val2017",
            max_images=500,
            image_ids=(),
            batch_size=1,
            # Skeleton drawings of the first images, logged to TensorBoard at each evaluation.
            logged_images=4,
        )
    )
    return config
